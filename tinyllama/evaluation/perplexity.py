"""Held-out perplexity and bits per byte of a model on texts (a file, a folder or a dataset), scored by the
repository's Hugging Face ``evaluate`` metric in ``evaluation/metrics/perplexity_bpb`` (bits per byte compare
across tokenizers)."""

from __future__ import annotations

import datetime
import json
import logging
import os
from pathlib import Path

from ..utils import atomic_write_text, is_hub_id
from .layout import DATA_FILE_BUILDERS, PERPLEXITY_METRIC, PERPLEXITY_RESULTS_FILE, RUN_INFO_FILE
from .models import resolve_model

log = logging.getLogger(__name__)

def load_texts(data: str | os.PathLike, text_field: str = "text", split: str = "validation",
               max_samples: int | None = None) -> list[str]:
    """Texts from a .txt file (one document), a .jsonl/.json/.parquet/.csv file or a folder of them (the
    ``text_field`` column), or a dataset name (``datasets.load_dataset(name, split=split)``)."""
    path = Path(data).expanduser()
    if path.is_file() and path.suffix == ".txt":
        texts = [path.read_text(encoding="utf-8")]
    else:
        import datasets

        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in DATA_FILE_BUILDERS)
            kinds = {DATA_FILE_BUILDERS[p.suffix] for p in files}
            if len(kinds) != 1:
                raise ValueError(f"{path}: expected files of one format (.jsonl, .json, .parquet or .csv), found "
                                 f"{sorted(kinds) or 'none'}")
            ds = datasets.load_dataset(kinds.pop(), data_files=[str(p) for p in files], split="train")
        elif path.is_file():
            if path.suffix not in DATA_FILE_BUILDERS:
                raise ValueError(f"{path}: expected .txt, .jsonl, .json, .parquet or .csv")
            ds = datasets.load_dataset(DATA_FILE_BUILDERS[path.suffix], data_files=str(path), split="train")
        elif not is_hub_id(data):
            raise FileNotFoundError(f"data not found: {data}")
        else:
            ds = datasets.load_dataset(str(data), split=split)
        if text_field not in ds.column_names:
            raise ValueError(f"{data}: no column {text_field!r} (columns: {ds.column_names}); set --text_field")
        if max_samples is not None:
            ds = ds.select(range(min(max_samples, len(ds))))
        texts = list(ds[text_field])
    texts = [t for t in texts if t]
    if max_samples is not None:
        texts = texts[:max_samples]
    if not texts:
        raise ValueError(f"{data}: no non-empty texts")
    return texts


def perplexity_metric():
    """The repository's ``evaluate`` metric (evaluation/metrics/perplexity_bpb), loaded from its local path."""
    import evaluate

    return evaluate.load(str(PERPLEXITY_METRIC))


def run_perplexity(model: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike | None = None, *,
                   text_field: str = "text", split: str = "validation", max_samples: int | None = None,
                   max_length: int | None = None, batch_size: int = 8) -> Path:
    """Held-out perplexity and bits per byte of a model on text data, written to
    ``<out>/<model-name>/perplexity/perplexity.json`` (beside a run_info.json, so the report shows it)."""
    resolved = resolve_model(model)
    texts = load_texts(data, text_field=text_field, split=split, max_samples=max_samples)
    result_dir = Path(out or resolved.default_out()) / resolved.name / "perplexity"
    scores = perplexity_metric().compute(predictions=texts, model_id=resolved.source, batch_size=batch_size,
                                         max_length=max_length)
    result = {"data": str(data), "text_field": text_field, **scores}
    atomic_write_text(result_dir / PERPLEXITY_RESULTS_FILE, json.dumps(result, indent=2))
    info = {"model": resolved.source, "model_name": resolved.name, "label": resolved.label,
            "run": resolved.run_dir.name if resolved.run_dir else None, "tokens_seen": resolved.tokens_seen,
            "step": resolved.step, "suite": "perplexity", "data": str(data),
            "finished": datetime.datetime.now().isoformat(timespec="seconds")}
    atomic_write_text(result_dir / RUN_INFO_FILE, json.dumps(info, indent=2))
    log.info("perplexity %.4f, bits per byte %.4f -> %s", scores["perplexity"], scores["bits_per_byte"], result_dir)
    return result_dir
