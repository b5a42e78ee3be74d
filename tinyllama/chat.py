"""Chat fine-tuning pieces shared by ``recipes/sft.py``, ``recipes/dpo.py``, ``scripts/chat.py`` and
``scripts/merge_lora.py``: the chat template, tokenizer setup, dataset loading and checks, early checks of the model
arguments, and the model card.

TinyLlama-1.1B-Chat-v1.0 is the alignment-handbook's Zephyr recipe (docs/reference.md, "Chat
models"): SFT on ``HuggingFaceH4/ultrachat_200k``, then DPO on ``HuggingFaceH4/ultrafeedback_binarized``, with the
Zephyr chat template. TRL does the training; what is written here is what TRL leaves to the script:

- one chat template, used for training (with ``{% generation %}`` markers so ``assistant_only_loss`` masks every
  non-assistant token) and saved with the model, so inference formats prompts exactly as training did;
- a pad token distinct from EOS (TRL falls back to ``pad = eos``; any collator that masks pad ids then also masks
  EOS, and the model never learns to stop);
- dataset checks with messages that name the dataset, split and row, before any model is loaded;
- checks that fail fast with a clear message (QLoRA without CUDA, a LoRA adapter given where a full model is
  needed, a missing local folder) instead of a stack trace minutes later;
- a model card that names the base model, data, recipe and hyperparameters (TRL's card names only the first two).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from .utils import atomic_write_text, repo_root

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------------
# The chat template: the one source of truth.
# ----------------------------------------------------------------------------------------------------------------
# Zephyr's template as TinyLlama-Chat-v1.0 ships it renders
#   <|system|>\n{system}</s>\n<|user|>\n{user}</s>\n<|assistant|>\n{assistant}</s>\n
# and the generation prompt "<|assistant|>\n". This template renders exactly that, with two additions:
# - {% generation %} ... {% endgeneration %} around each assistant reply *and its EOS*, so TRL's
#   assistant_only_loss trains the reply and the EOS that ends it, and nothing else (not the role markers, not the
#   "\n" after the EOS, which belongs to the next turn's prompt);
# - a leading BOS. The handbook rendered text, then tokenized it with add_special_tokens=True, so TinyLlama-Chat
#   saw BOS first; TRL and scripts/chat.py tokenize through the template (no special tokens added), so the BOS
#   must be in the template for the token sequence to be the same (and the base model always saw BOS first).
# Unknown roles raise instead of being silently dropped (Zephyr's original skips them).
ZEPHYR_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{{- '<|system|>\n' + message['content'] + eos_token + '\n' }}"
    "{%- elif message['role'] == 'user' %}"
    "{{- '<|user|>\n' + message['content'] + eos_token + '\n' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- '<|assistant|>\n' }}"
    "{%- generation %}{{- message['content'] + eos_token }}{%- endgeneration %}"
    "{{- '\n' }}"
    "{%- else %}"
    "{{- raise_exception('unknown chat role: ' + message['role'] + ' (expected system, user or assistant)') }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\n' }}{%- endif %}"
)
ROLES = ("system", "user", "assistant")


def chat_template_from(spec: str | None) -> str | None:
    """``zephyr`` -> the template above; a ``.jinja`` file -> its text; ``tokenizer`` or None -> keep the
    tokenizer's own (returns None)."""
    if spec in (None, "", "tokenizer"):
        return None
    if spec == "zephyr":
        return ZEPHYR_CHAT_TEMPLATE
    path = Path(spec)
    if path.suffix in (".jinja", ".j2"):
        if not path.is_file():
            raise FileNotFoundError(f"chat_template: file not found: {path}")
        return path.read_text(encoding="utf-8")
    raise ValueError(f"chat_template must be 'zephyr', 'tokenizer' or a .jinja file, got {spec!r}")


def has_generation_markers(template: str | None) -> bool:
    return template is not None and "generation" in template and "endgeneration" in template


def setup_tokenizer(name_or_path: str, *, chat_template: str | None = "zephyr", revision: str = "main",
                    trust_remote_code: bool = False):
    """The tokenizer every chat stage uses: chat template set, pad token set and distinct from EOS.

    The tokenizer is saved with the model (and with adapters), so the next stage and inference read both back.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision,
                                                  trust_remote_code=trust_remote_code)
    except OSError as e:
        offline = " (HF_HUB_OFFLINE is set: a Hub id must already be in the local cache)" \
            if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") else ""
        raise ValueError(f"model_name_or_path / tokenizer_name_or_path: cannot load the tokenizer of "
                         f"{name_or_path!r}{offline}: {str(e).splitlines()[0]}") from None
    if tokenizer.eos_token is None:
        raise ValueError(f"tokenizer of {name_or_path} has no EOS token; a chat model needs one to stop")
    template = chat_template_from(chat_template)
    if template is not None:
        tokenizer.chat_template = template
    elif not tokenizer.chat_template:
        raise ValueError(f"chat_template: 'tokenizer' asked for the tokenizer's own template, but {name_or_path} "
                         "has none; use chat_template: zephyr")
    set_pad_token(tokenizer, name_or_path)
    return tokenizer


def set_pad_token(tokenizer, name: str = "the tokenizer") -> None:
    """Make ``pad != eos``: keep a distinct pad token, else use ``<unk>`` (Llama-2's tokenizer has only
    unk/bos/eos; ``<unk>`` never occurs in byte-fallback tokenizations, and padded positions carry label -100)."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    if tokenizer.unk_token is not None and tokenizer.unk_token_id not in (tokenizer.eos_token_id, None):
        tokenizer.pad_token = tokenizer.unk_token
        return
    raise ValueError(
        f"{name}: no pad token distinct from EOS, and no <unk> to use instead. Padding with EOS would hide the EOS "
        "from the loss and the model would never learn to stop. Add a pad token to the tokenizer (and resize the "
        "model's embeddings) first."
    )


# ----------------------------------------------------------------------------------------------------------------
# Datasets: UltraChat (messages) and UltraFeedback-binarized (chosen/rejected message lists) schemas.
# ----------------------------------------------------------------------------------------------------------------
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
    if _looks_local(name) and not path.exists():
        raise FileNotFoundError(f"dataset_name: local dataset not found: {name}")
    try:
        return load_dataset(name, config, split=split, streaming=streaming)  # downloads that split's files only
    except ValueError as e:
        if "split" in str(e).lower():
            raise ValueError(f"dataset {name!r} has no split {split!r}: {e}") from None
        raise
    except (ConnectionError, OSError) as e:
        raise ValueError(f"dataset_name: cannot load {name!r}: {e}") from None


def _looks_local(name: str) -> bool:
    """A path rather than a Hub id (``owner/name``): starts with . / ~, has more than one slash, or starts with a
    folder that exists here or that the recipes write (outputs/, data/)."""
    first = name.split("/")[0]
    return (name.startswith((".", "/", "~")) or name.count("/") > 1
            or ("/" in name and (first in ("outputs", "data") or Path(first).is_dir())))


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


def prefix_mismatches(tokenizer, conversations: Iterable[list[dict]], limit: int = 64) -> list[int]:
    """Indices of conversations whose inference prompt (everything before the last assistant reply, plus the
    generation prompt) does not tokenize to a prefix of the training tokens.

    At such a boundary the model is trained on one token sequence and prompted with another. It happens when a
    tokenizer merges the generation prompt's last characters with the reply's first (Llama-2's tokenizer doesn't
    across "\\n"; small BPE vocabularies can).
    """
    bad = []
    for i, messages in enumerate(conversations):
        if i >= limit:
            break
        last = max((j for j, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            continue
        full = tokenizer.apply_chat_template(messages[: last + 1], tokenize=True, return_dict=True)["input_ids"]
        prompt = tokenizer.apply_chat_template(messages[:last], tokenize=True, add_generation_prompt=True,
                                               return_dict=True)["input_ids"]
        if full[: len(prompt)] != prompt:
            bad.append(i)
    return bad


# ----------------------------------------------------------------------------------------------------------------
# Early checks of the model arguments.
# ----------------------------------------------------------------------------------------------------------------
def is_adapter_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def check_model_source(name: str | None, field: str = "model_name_or_path", allow_adapter: bool = False) -> None:
    if not name:
        raise ValueError(f"{field} is required: a model folder (e.g. the pretraining export) or a Hub id such as "
                         "TinyLlama/TinyLlama_v1.1")
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"{field}: {name} is not a model folder")
        if is_adapter_dir(path) and not allow_adapter:
            raise ValueError(f"{field}: {name} is a LoRA adapter, not a model. Merge it into its base first: "
                             f"python scripts/merge_lora.py {name} --output_dir {name}-merged")
        if not (path / "config.json").is_file() and not is_adapter_dir(path):
            raise FileNotFoundError(f"{field}: {name} has no config.json; is it a Hugging Face model folder?")
    elif _looks_local(str(name)):
        raise FileNotFoundError(f"{field}: model folder not found: {name}")


def check_quantization(model_args) -> None:
    """QLoRA/8-bit needs CUDA and bitsandbytes: say so before anything is loaded."""
    quantized = getattr(model_args, "load_in_4bit", False) or getattr(model_args, "load_in_8bit", False)
    if not quantized:
        return
    kind = "load_in_4bit (QLoRA)" if model_args.load_in_4bit else "load_in_8bit"
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"{kind} needs a CUDA GPU (bitsandbytes quantizes on the GPU), and this machine has none. "
                         "Use configs/chat/sft-lora.yaml (LoRA without quantization) here, or run on a GPU.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"{kind} needs the bitsandbytes package: pip install -r requirements-gpu.txt")
    if not model_args.use_peft:
        raise ValueError(f"{kind} trains adapters only: set use_peft: true (a quantized model cannot be fully "
                         "fine-tuned)")


HALF_DTYPES = ("bfloat16", "bf16", "float16", "fp16", "half")


def uses_deepspeed(training_args) -> bool:
    """DeepSpeed through the TrainingArguments (``deepspeed:``) or an ``accelerate launch`` DeepSpeed config."""
    return bool(getattr(training_args, "deepspeed", None)) or \
        os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def check_precision(model_args, training_args) -> None:
    """A full fine-tune must keep fp32 master weights: load the weights in float32 and let ``bf16: true`` autocast.

    With bf16 weights and no DeepSpeed, AdamW updates the bf16 weights themselves, and an update of about the
    learning rate is far below half the bf16 spacing of a typical weight (about 6e-5 for a weight near 0.02): it
    rounds away. Measured on the demo (DPO at lr 5e-7, 4 steps): 0.68% of the parameters changed at all with bf16
    weights, 76% with fp32 weights. DeepSpeed keeps an fp32 master copy of bf16 weights, so there it is allowed;
    LoRA trains fp32 adapters on a frozen base, so its base stays in bf16. An unset dtype ("auto" in transformers 5
    means the checkpoint's, bf16 for TinyLlama) becomes float32 here, with a log line."""
    if model_args.use_peft or uses_deepspeed(training_args):
        return
    dtype = str(model_args.dtype or "auto")
    if dtype in HALF_DTYPES:
        raise ValueError(
            f"dtype: {dtype} for a full fine-tune: AdamW would update {dtype} weights directly and lose most updates "
            f"(at learning rate {training_args.learning_rate:g} an update is far below the {dtype} spacing of a "
            "weight). Load the weights in float32 (--dtype float32; bf16: true keeps the speed through autocast), "
            "launch with DeepSpeed (configs/accelerate/deepspeed-zero2.yaml keeps fp32 master weights), or train "
            "LoRA adapters (use_peft: true)")
    if dtype == "auto":
        log.info("dtype unset for a full fine-tune: loading the weights in float32 (fp32 master weights; bf16: true "
                 "autocasts the compute)")
        model_args.dtype = "float32"


def precheck_argv(argv: Sequence[str]) -> None:
    """The checks that must win over everything else, run on the raw YAML + overrides before parsing: a Hub token
    in the config (it would be pickled into training_args.bin and pushed), and a QLoRA config on a machine without
    CUDA (which would otherwise fail on its ``bf16: true``, or deep in bitsandbytes, with a message that does not
    say what is wrong)."""
    from types import SimpleNamespace

    from .config import load_yaml, split_cli

    config, overrides, _ = split_cli(argv)
    values = dict(load_yaml(config)) if config and Path(config).is_file() else {}
    values.update(overrides)

    for key in ("hub_token", "push_to_hub_token"):
        if values.get(key):
            raise ValueError(f"{key}: do not put the Hub token in a config or on the command line: Trainer pickles "
                             "its arguments into training_args.bin, which is saved and pushed with the model. Set "
                             "HF_TOKEN in the environment or run `hf auth login` instead.")

    def flag(key):
        return str(values.get(key, False)).lower() in ("true", "1", "yes")

    check_quantization(SimpleNamespace(load_in_4bit=flag("load_in_4bit"), load_in_8bit=flag("load_in_8bit"),
                                       use_peft=True))


def complete_trainer_checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` folders by step whose ``trainer_state.json`` (the Trainer writes it last) is whole: a run killed
    while saving leaves a folder with weights but no state, which must never be resumed from."""
    import json
    import re

    found = []
    if Path(output_dir).is_dir():
        for p in Path(output_dir).iterdir():
            m = re.fullmatch(r"checkpoint-(\d+)", p.name)
            if not (m and p.is_dir() and (p / "trainer_state.json").is_file()):
                continue
            try:
                json.loads((p / "trainer_state.json").read_text())
            except ValueError:
                continue
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def resolve_resume(value: str | None, output_dir: str) -> str | bool | None:
    """``resume_from_checkpoint``: a checkpoint folder, or ``last`` for the newest one in ``output_dir``."""
    if value in (None, "", "false", "False", "no"):
        return None
    if value in ("last", "true", "True", "yes"):
        found = complete_trainer_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(f"resume_from_checkpoint: last: no checkpoint-* folder with a complete trainer_state.json in "
                                    f"{output_dir}")
        return str(found[-1])
    if not Path(value).is_dir():
        raise FileNotFoundError(f"resume_from_checkpoint: checkpoint folder not found: {value}")
    return value


def model_init_kwargs(model_args, training_args) -> dict:
    """Keyword arguments for ``from_pretrained`` (TRL loads the model from them), attention resolved once."""
    from trl import get_quantization_config

    from .model import resolve_attn_implementation

    kwargs = dict(
        revision=model_args.model_revision,
        dtype=model_args.dtype,
        attn_implementation=resolve_attn_implementation(model_args.attn_implementation or "auto"),
        trust_remote_code=training_args.trust_remote_code,
    )
    quantization = get_quantization_config(model_args)
    if quantization is not None:
        from accelerate import PartialState

        # each process loads its quantized copy onto its own GPU (device_map="auto" would spread it over all)
        kwargs["device_map"] = {"": PartialState().local_process_index}
    kwargs.update(training_args.model_init_kwargs or {})
    return kwargs


# ----------------------------------------------------------------------------------------------------------------
# Demo assets: built on first use, like the pretraining demo builds its data.
# ----------------------------------------------------------------------------------------------------------------
DEMO_CHAT_DIR = repo_root() / "data" / "demo" / "chat"


def ensure_demo_assets(*names: str | None) -> None:
    """If a name points into data/demo/chat and is missing, build the chat demo (fixtures and base model)."""
    root = DEMO_CHAT_DIR.resolve()
    for name in names:
        if not name:
            continue
        p = Path(name).resolve()
        if (p == root or root in p.parents) and not p.exists():
            from .chat_fixtures import build_chat_demo

            log.info("building the chat demo assets under %s", DEMO_CHAT_DIR)
            build_chat_demo(DEMO_CHAT_DIR)
            return


# ----------------------------------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------------------------------
CARD_HYPERPARAMETERS = (
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "lr_scheduler_type", "warmup_steps", "weight_decay", "optim", "max_length", "max_prompt_length", "packing",
    "packing_strategy", "assistant_only_loss", "beta", "loss_type", "bf16", "gradient_checkpointing", "seed",
    "use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "load_in_4bit",
    "bnb_4bit_quant_type", "use_bnb_nested_quant", "dtype",
)


def is_hub_id(name: str | None) -> bool:
    return bool(name) and not Path(str(name)).exists() and str(name).count("/") == 1 and not _looks_local(str(name))


def model_card_text(*, stage: str, base_model: str, datasets: Sequence[str], config: dict, config_file: str | None,
                    adapter: bool, world_size: int = 1, metrics: dict | None = None, notes: str = "") -> str:
    """README.md for a chat model or adapter: YAML metadata for the Hub, then base, data, recipe, hyperparameters."""
    import yaml
    from huggingface_hub import ModelCardData

    hub_datasets = [d for d in datasets if is_hub_id(d)]
    data = ModelCardData(
        base_model=base_model if is_hub_id(base_model) else None,
        datasets=hub_datasets or None,
        library_name="peft" if adapter else "transformers",
        license="apache-2.0",
        pipeline_tag="text-generation",
        tags=["tinyllama", "trl", stage.lower(), "chat", *(["lora"] if adapter else [])],
    )
    batch = config.get("per_device_train_batch_size", 1) * config.get("gradient_accumulation_steps", 1) * world_size
    skip = set()
    if not config.get("use_peft"):
        skip |= {k for k in CARD_HYPERPARAMETERS if k.startswith("lora_")}
    if not config.get("load_in_4bit"):
        skip |= {"bnb_4bit_quant_type", "use_bnb_nested_quant", "load_in_4bit"}
    if not config.get("packing"):
        skip.add("packing_strategy")
    rows = [f"| {k} | {config[k]} |" for k in CARD_HYPERPARAMETERS
            if k in config and config[k] is not None and k not in skip]
    rows.append(f"| global batch (sequences) | {batch} |")
    what = "LoRA adapter" if adapter else "model"
    recipe = f"`{config_file}`" if config_file else "the recipe's command line"
    lines = [
        "---", data.to_yaml(), "---", "",
        f"# {Path(str(config.get('output_dir', 'model'))).name}", "",
        f"A TinyLlama chat {what} trained with {stage} ({'recipes/sft.py' if stage == 'SFT' else 'recipes/dpo.py'}, "
        "TRL), following the recipe of TinyLlama-1.1B-Chat-v1.0 (the alignment-handbook's Zephyr recipe).", "",
        f"- **Base model:** `{base_model}`",
        f"- **Data:** {', '.join(f'`{d}`' for d in datasets)}",
        f"- **Recipe:** {recipe}; the resolved configuration is in `config.yaml` beside this card.",
        "- **Chat template:** Zephyr (`<|system|>`, `<|user|>`, `<|assistant|>`, turns ended by `</s>`), saved with "
        "the tokenizer; the loss was on assistant replies and their `</s>` only.",
    ]
    if adapter:
        lines.append("- **Use:** load with `peft.AutoPeftModelForCausalLM`, or merge into the base: "
                     "`python scripts/merge_lora.py <this folder> --output_dir <merged>`.")
    lines += ["", "## Hyperparameters", "", "| name | value |", "|---|---|", *rows, ""]
    metrics = {k: v for k, v in (metrics or {}).items()
               if not k.endswith(("_runtime", "_per_second", "num_tokens")) and k != "epoch"}
    if metrics:
        lines += ["## Results", "", "| metric | value |", "|---|---|",
                  *[f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()],
                  ""]
    if notes:
        lines += [notes, ""]
    lines += ["## Chat", "", "```bash", "python scripts/chat.py <this folder or Hub id>", "```", ""]
    text = "\n".join(lines)
    yaml.safe_load(text.split("---")[1])  # the metadata block must stay valid YAML
    return text


class ChatModelCardMixin:
    """Replaces TRL's ``create_model_card`` (called on save and by ``push_to_hub``) with ours, so the card pushed
    to the Hub names the recipe and hyperparameters too."""

    card_info: dict | None = None

    def create_model_card(self, model_name=None, dataset_name=None, tags=None, **kwargs):
        if not self.is_world_process_zero() or not self.card_info:
            return
        from .utils import atomic_write_text

        metrics = {k: v for k, v in (self.card_info.get("metrics") or {}).items()}
        text = model_card_text(**{**self.card_info, "metrics": metrics, "world_size": self.args.world_size})
        atomic_write_text(Path(self.args.output_dir) / "README.md", text)


def save_run_config(output_dir: str | os.PathLike, *instances, extra: dict | None = None) -> dict:
    """``config.yaml`` beside the model: the resolved configuration, secrets dropped (config_to_dict)."""
    import yaml

    from .config import config_to_dict
    from .utils import atomic_write_text

    resolved = config_to_dict(*instances)
    resolved.update(extra or {})
    atomic_write_text(Path(output_dir) / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    return resolved


# ----------------------------------------------------------------------------------------------------------------
# The end of both recipes: train, save model + tokenizer + config + card, push.
# ----------------------------------------------------------------------------------------------------------------
def config_to_card_dict(*instances) -> dict:
    from .config import config_to_dict

    return config_to_dict(*instances)


def config_file_of(argv: Sequence[str]) -> str | None:
    from .config import split_cli

    return split_cli(argv)[0]


def train_and_save(trainer, resume, *arg_instances) -> dict:
    """Train (resuming if asked), then write to output_dir: the model or adapter with its tokenizer and chat
    template, ``config.yaml`` (the resolved configuration, no secrets) and README.md (the model card); push the
    folder to the Hub when ``push_to_hub`` is set."""
    output_dir = trainer.args.output_dir
    if trainer.is_world_process_zero():
        save_run_config(output_dir, *arg_instances)
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = {"train_loss": result.training_loss, "train_steps": trainer.state.global_step}
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    model = trainer.accelerator.unwrap_model(trainer.model)
    (model.get_base_model() if hasattr(model, "get_base_model") else model).config.use_cache = True  # for chat
    trainer.save_model(output_dir)
    if trainer.is_world_process_zero():  # save_model's save_pretrained does not write the tokenizer.model
        from .tokenizer import copy_sentencepiece_model

        copy_sentencepiece_model(trainer.processing_class, output_dir)
    if trainer.card_info is not None:
        trainer.card_info["metrics"] = metrics
    trainer.create_model_card()
    if trainer.args.push_to_hub:
        trainer.push_to_hub()
        log.info("pushed %s to https://huggingface.co/%s", output_dir, trainer.hub_model_id)
    if trainer.is_world_process_zero():
        # what the run reports, like pretraining's summary.json (the pipeline's table reads it, never the log)
        summary = {"step": trainer.state.global_step, "final_loss": result.training_loss, "run_dir": str(output_dir),
                   "metrics": metrics}
        atomic_write_text(Path(output_dir) / "summary.json", json.dumps(summary, indent=2))
        log.info("saved %s to %s: %s", "adapter" if is_adapter_dir(output_dir) else "model", output_dir,
                 ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    return metrics


class ForwardCounter:
    """Counts a model's forward passes while attached (a drafted reply takes fewer of the big model's forward
    passes than it has tokens; scripts/chat.py and scripts/benchmark_inference.py report them)."""

    def __init__(self, model):
        self.calls = 0
        self._handle = model.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1

    def remove(self) -> None:
        self._handle.remove()
