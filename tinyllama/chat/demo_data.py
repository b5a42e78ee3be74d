"""Small chat and preference data sets in the real schemas, and a tiny base model: the chat demo's data, built on
first use under data/demo/chat like the pretraining demo builds its data (the tests build theirs with the same
functions; their own helpers are in tests/chat_helpers.py).

| folder under data/demo/chat/        | stands in for                            | splits                 |
|-------------------------------------|------------------------------------------|------------------------|
| ``ultrachat_200k/``                 | HuggingFaceH4/ultrachat_200k             | train_sft, test_sft    |
| ``ultrafeedback_binarized/``        | HuggingFaceH4/ultrafeedback_binarized    | train_prefs, test_prefs|
| ``base/``                           | a base model (TinyLlama/TinyLlama_v1.1)  | (configs/model/demo.json, random weights, demo tokenizer) |
| ``base-tiny/``                      | a smaller student for distillation       | (configs/model/tiny.json, random weights, demo tokenizer) |

The data sets are laid out like the Hub repositories (``data/<split>-00000-of-00001.parquet``), so
``load_dataset("data/demo/chat/ultrachat_200k")`` returns the same split names as the Hub id. Rows are generated
conversations with one right answer each (arithmetic, capitals, spelling, greetings, counting), so a tiny model
learns them in a few hundred steps and a preference is unambiguous: ``chosen`` is the right answer, ``rejected`` a
wrong one.

Schemas (as on the Hub):
- UltraChat: ``prompt`` (str), ``prompt_id`` (sha256 of the prompt), ``messages`` (list of {role, content}).
- UltraFeedback-binarized: ``prompt``, ``prompt_id``, ``chosen`` and ``rejected`` (the user turn then the
  assistant reply), ``messages`` (= chosen), ``score_chosen``, ``score_rejected`` (floats, 1-10).
"""

from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path

from ..utils import atomic_dir, repo_root

log = logging.getLogger(__name__)

DEMO_CHAT_DIR = repo_root() / "data" / "demo" / "chat"

CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Germany", "Berlin"), ("Canada", "Ottawa"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"),
            ("Peru", "Lima"), ("Norway", "Oslo"), ("Greece", "Athens"), ("Chile", "Santiago")]
NAMES = ["Ada", "Alan", "Grace", "Linus", "Guido", "Barbara", "Ken", "Margaret", "Dennis", "Frances"]
WORDS = ["cat", "house", "river", "paper", "window", "garden", "music", "planet", "number", "letter"]
SYSTEMS = ["You are a helpful assistant.", "You are a concise assistant: answer in one sentence.",
           "You are TinyLlama, a small and friendly chat model."]


def _task(rng: random.Random) -> tuple[str, str, str]:
    """(user message, right answer, a wrong answer)."""
    kind = rng.randrange(5)
    if kind == 0:
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        wrong = a + b + rng.choice([-3, -2, -1, 1, 2, 3])
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", f"{a} plus {b} is {wrong}."
    if kind == 1:
        country, city = rng.choice(CAPITALS)
        other = rng.choice([c for _, c in CAPITALS if c != city])
        return (f"What is the capital of {country}?", f"The capital of {country} is {city}.",
                f"The capital of {country} is {other}.")
    if kind == 2:
        w = rng.choice(WORDS)
        return f"Spell the word {w} backwards.", f"{w} backwards is {w[::-1]}.", f"{w} backwards is {w}."
    if kind == 3:
        n = rng.choice(NAMES)
        return (f"Hello, my name is {n}.", f"Hello, {n}! How can I help you today?",
                "I do not want to talk to you.")
    k = rng.randint(3, 7)
    right = ", ".join(str(i) for i in range(1, k + 1)) + "."
    wrong = ", ".join(str(i) for i in range(1, k + 1) if i != 2) + "."
    return f"Count from 1 to {k}.", right, wrong


def prompt_id(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def ultrachat_rows(n: int, seed: int = 0) -> list[dict]:
    """Conversations of 1-3 exchanges, a quarter of them with a system prompt."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        messages = []
        if rng.random() < 0.25:
            messages.append({"role": "system", "content": rng.choice(SYSTEMS)})
        for _ in range(rng.choice([1, 1, 2, 3])):
            user, right, _ = _task(rng)
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": right}]
        prompt = next(m["content"] for m in messages if m["role"] == "user")
        rows.append({"prompt": prompt, "prompt_id": prompt_id(prompt), "messages": messages})
    return rows


def ultrafeedback_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        user, right, wrong = _task(rng)
        chosen = [{"role": "user", "content": user}, {"role": "assistant", "content": right}]
        rejected = [{"role": "user", "content": user}, {"role": "assistant", "content": wrong}]
        rows.append({"prompt": user, "prompt_id": prompt_id(user), "chosen": chosen, "rejected": rejected,
                     "messages": chosen, "score_chosen": float(rng.randint(7, 10)),
                     "score_rejected": float(rng.randint(1, 5))})
    return rows


def write_hub_layout(out: str | Path, splits: dict[str, list[dict]]) -> Path:
    """Write ``out/data/<split>-00000-of-00001.parquet`` for each split (the Hub's parquet layout)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    with atomic_dir(out) as tmp:
        (tmp / "data").mkdir()
        for split, rows in splits.items():
            pq.write_table(pa.Table.from_pylist(rows), tmp / "data" / f"{split}-00000-of-00001.parquet")
    return out


def build_ultrachat(out: str | Path, n_train: int = 512, n_test: int = 64, seed: int = 0) -> Path:
    return write_hub_layout(out, {"train_sft": ultrachat_rows(n_train, seed),
                                  "test_sft": ultrachat_rows(n_test, seed + 1)})


def build_ultrafeedback(out: str | Path, n_train: int = 256, n_test: int = 64, seed: int = 0) -> Path:
    return write_hub_layout(out, {"train_prefs": ultrafeedback_rows(n_train, seed),
                                  "test_prefs": ultrafeedback_rows(n_test, seed + 1)})


def build_base_model(out: str | Path, model_config: str = "demo", seed: int = 0) -> Path:
    """A randomly initialised TinyLlama-shaped model with the demo tokenizer, saved as a normal model folder."""
    from transformers import AutoTokenizer

    from ..demo_corpus import build_demo
    from ..model import build_model
    from ..tokenizer import save_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(build_demo()["tokenizer"]))
    model = build_model(model_config, attn_implementation="sdpa", seed=seed)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)  # with tokenizer.model, as TinyLlama's Hub folders have
    return Path(out)


def build_chat_demo(root: str | Path) -> dict[str, Path]:
    """Build (or reuse) everything the chat demo configs read."""
    root = Path(root)
    paths = {"ultrachat": root / "ultrachat_200k", "ultrafeedback": root / "ultrafeedback_binarized",
             "base": root / "base", "base_tiny": root / "base-tiny"}
    if not paths["ultrachat"].exists():
        build_ultrachat(paths["ultrachat"])
    if not paths["ultrafeedback"].exists():
        build_ultrafeedback(paths["ultrafeedback"])
    if not paths["base"].exists():
        build_base_model(paths["base"])
    if not paths["base_tiny"].exists():
        build_base_model(paths["base_tiny"], model_config="tiny")
    return paths


def ensure_demo_assets(*names: str | None) -> None:
    """If a name points into data/demo/chat and is missing, build the chat demo (fixtures and base model)."""
    root = DEMO_CHAT_DIR.resolve()
    for name in names:
        if not name:
            continue
        p = Path(name).resolve()
        if (p == root or root in p.parents) and not p.exists():
            log.info("building the chat demo assets under %s", DEMO_CHAT_DIR)
            build_chat_demo(DEMO_CHAT_DIR)
            return
