"""Chat data sets: loading a split (Hub id, local folder or file) and checking every row before any model is loaded,
with messages that name the dataset, split and row. Schemas: UltraChat (``messages``) for SFT and
UltraFeedback-binarized (``chosen``/``rejected`` message lists) for the preference methods; KTO reads the same pairs
as unpaired rows (:func:`prepare_unpaired_dataset`), distillation the UltraChat conversations as prompts
(:func:`prepare_prompt_dataset`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..utils import is_hub_id
from .template import ROLES


def message_problem(messages: Any, *, need_assistant: bool = True) -> str | None:
    """Why ``messages`` is not a usable conversation, or None."""
    if not isinstance(messages, list) or not messages:
        return f"expected a non-empty list of {{role, content}} messages, got {type(messages).__name__}"
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return f"message {j} is not a {{role, content}} mapping: {str(m)[:80]!r}"
        if m["role"] not in ROLES:
            return f"message {j} has role {m['role']!r} (expected one of {', '.join(ROLES)})"
        if not isinstance(m["content"], str):
            return f"message {j} ({m['role']}) content is {type(m['content']).__name__}, not text"
        if m["role"] == "system" and j != 0:
            return f"message {j} is a system message; only the first message may be one"
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        return "no assistant message: nothing to train on"
    return None


def load_split(name: str, config: str | None, split: str, *, streaming: bool = False):
    """One split of a Hub dataset or a local dataset folder/file, with errors that name both."""
    from datasets import load_dataset

    path = Path(name)
    if path.suffix in (".json", ".jsonl", ".parquet") and path.is_file():
        builder = "parquet" if path.suffix == ".parquet" else "json"
        return load_dataset(builder, data_files={split: str(path)}, split=split, streaming=streaming)
    if not path.exists() and not is_hub_id(name):
        raise FileNotFoundError(f"dataset_name: local dataset not found: {name}")
    try:
        return load_dataset(name, config, split=split, streaming=streaming)  # downloads that split's files only
    except ValueError as e:
        if "split" in str(e).lower():
            raise ValueError(f"dataset {name!r} has no split {split!r}: {e}") from None
        raise
    except (ConnectionError, OSError) as e:
        raise ValueError(f"dataset_name: cannot load {name!r}: {e}") from None


def prepare_sft_dataset(dataset, name: str, split: str, max_samples: int | None = None):
    """Check every row of an UltraChat-schema split and keep only ``messages``.

    Only ``messages`` is kept on purpose: UltraChat rows also carry a ``prompt`` string, and TRL's SFTTrainer reads
    any row with a ``prompt`` column as prompt-completion data (it would fail, or train on the wrong thing).
    """
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    columns = dataset.column_names or []
    if "messages" not in columns:
        raise ValueError(f"dataset {name!r} split {split!r}: no 'messages' column (columns: {', '.join(columns)}); "
                         "chat SFT needs UltraChat's schema: messages = list of {role, content}")
    problems = []
    for i, row in enumerate(dataset.select_columns(["messages"])):
        why = message_problem(row["messages"])
        if why:
            problems.append(f"row {i}: {why}")
            if len(problems) >= 5:
                break
    if problems:
        raise ValueError(f"dataset {name!r} split {split!r} has rows that are not chats:\n  " + "\n  ".join(problems))
    return dataset.select_columns(["messages"])


def preference_to_conversational(row: dict, where: str) -> dict:
    """UltraFeedback-binarized row -> TRL's conversational preference format.

    UltraFeedback-binarized stores whole conversations in ``chosen`` / ``rejected`` (the user turn, then the
    assistant reply) and the prompt again as a string. TRL wants ``prompt`` as the shared message prefix and
    ``chosen`` / ``rejected`` as the final assistant turns; the string ``prompt`` is used only when the lists hold
    the reply alone.
    """
    chosen, rejected = row.get("chosen"), row.get("rejected")
    for key, msgs in (("chosen", chosen), ("rejected", rejected)):
        why = message_problem(msgs)
        if why:
            raise ValueError(f"{where}: '{key}': {why}")
        if msgs[-1]["role"] != "assistant":
            raise ValueError(f"{where}: '{key}' must end with the assistant reply, ends with {msgs[-1]['role']!r}")
    if chosen[:-1] != rejected[:-1]:
        raise ValueError(f"{where}: 'chosen' and 'rejected' have different prompts (the messages before the reply)")
    prompt = [dict(m) for m in chosen[:-1]]
    if not prompt:
        text = row.get("prompt")
        if not isinstance(text, str) or not text:
            raise ValueError(f"{where}: no prompt: 'chosen' holds only the reply and there is no 'prompt' string")
        prompt = [{"role": "user", "content": text}]
    if prompt[-1]["role"] != "user":
        raise ValueError(f"{where}: the prompt must end with a user message, ends with {prompt[-1]['role']!r}")
    return {"prompt": prompt, "chosen": [dict(chosen[-1])], "rejected": [dict(rejected[-1])]}


def prepare_preference_dataset(dataset, name: str, split: str, max_samples: int | None = None):
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    columns = dataset.column_names or []
    missing = [c for c in ("chosen", "rejected") if c not in columns]
    if missing:
        raise ValueError(f"dataset {name!r} split {split!r}: missing column(s) {', '.join(missing)} (columns: "
                         f"{', '.join(columns)}); DPO needs UltraFeedback-binarized's schema: chosen/rejected = "
                         "message lists")
    for i, row in enumerate(dataset):  # check all rows first: map() would report a worker's traceback instead
        preference_to_conversational(row, f"dataset {name!r} split {split!r} row {i}")
    return dataset.map(lambda row, i: preference_to_conversational(row, f"row {i}"), with_indices=True,
                       remove_columns=columns, desc=f"Formatting {split}")


def prepare_unpaired_dataset(dataset, name: str, split: str, max_samples: int | None = None, seed: int = 0):
    """UltraFeedback-binarized pairs -> KTO's unpaired rows: each pair (checked as for DPO; ``max_samples`` counts
    pairs) becomes ``(prompt, chosen, label True)`` and ``(prompt, rejected, label False)``, by TRL's
    ``unpair_preference_dataset``; then the rows are shuffled with ``seed``. The shuffle matters: TRL's KTO reads the
    training set in order (its KL term is estimated within each batch, from each prompt paired with another row's
    reply), and unpairing leaves the desirable rows of each block of 1000 before the undesirable ones, so without it
    batches would be all desirable or all undesirable."""
    from trl.data_utils import unpair_preference_dataset

    pairs = prepare_preference_dataset(dataset, name, split, max_samples)
    return unpair_preference_dataset(pairs).shuffle(seed=seed).flatten_indices()


def conversation_to_prompt(messages: list[dict]) -> dict:
    """An UltraChat conversation -> ``{"prompt": every turn before the last assistant reply, "completion": that
    reply}`` (TRL's conversational prompt-completion format). The distillation trainer reads only ``prompt`` (the
    student writes its own reply); ``completion`` is the held-out measure's (tinyllama/chat/measure.py)."""
    last = max(j for j, m in enumerate(messages) if m["role"] == "assistant")
    return {"prompt": [dict(m) for m in messages[:last]], "completion": [dict(messages[last])]}


def prepare_prompt_dataset(dataset, name: str, split: str, max_samples: int | None = None):
    """Check every row of an UltraChat-schema split (as :func:`prepare_sft_dataset`) and read each conversation as a
    prompt (:func:`conversation_to_prompt`); a conversation whose last reply follows no user turn is refused."""
    chats = prepare_sft_dataset(dataset, name, split, max_samples)
    for i, row in enumerate(chats):
        prompt = conversation_to_prompt(row["messages"])["prompt"]
        if not prompt or prompt[-1]["role"] != "user":
            raise ValueError(f"dataset {name!r} split {split!r} row {i}: the last assistant reply must follow a user "
                             "message (it is what the student is prompted with)")
    return chats.map(lambda row: conversation_to_prompt(row["messages"]), remove_columns=["messages"],
                     desc=f"Reading {split} as prompts")
