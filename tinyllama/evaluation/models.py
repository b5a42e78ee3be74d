"""MODEL resolution: a model folder, a training checkpoint (exported on the fly when its export is missing)
or a Hub id, checked before anything is loaded; the training metadata (tokens seen, step) of an export."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from pathlib import Path

from ..environment import offline
from ..utils import is_hub_id
from .layout import DEFAULT_OUT, TRAINING_METADATA_FILE

log = logging.getLogger(__name__)

@dataclasses.dataclass
class ResolvedModel:
    source: str  # what lm-eval loads: an absolute folder path or a Hub id
    name: str  # folder name under <out>/: the export's folder name (step-000500) or owner__name
    local: bool
    run_dir: Path | None = None  # outputs/<run> when the model is one of its exports
    tokens_seen: int | None = None
    step: int | None = None

    @property
    def label(self) -> str:
        return f"{self.run_dir.name}/{self.name}" if self.run_dir is not None else self.name

    def default_out(self) -> Path:
        return self.run_dir / "eval" if self.run_dir is not None else DEFAULT_OUT


def is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors*"))


def read_training_metadata(model_dir: str | os.PathLike) -> dict:
    """``{"tokens_seen": int|None, "step": int|None}`` for a model folder.

    Read from ``training_metadata.json`` (keys ``tokens_seen``, ``step``: what the pretraining loop writes in
    each export), else from a Trainer's ``trainer_state.json`` (``num_input_tokens_seen``, ``global_step``);
    the step also from a folder name ``step-000500``.
    """
    model_dir = Path(model_dir)
    tokens = step = None
    meta = model_dir / TRAINING_METADATA_FILE
    state = model_dir / "trainer_state.json"
    if meta.is_file():
        data = json.loads(meta.read_text(encoding="utf-8"))
        tokens, step = data.get("tokens_seen"), data.get("step")
    elif state.is_file():
        data = json.loads(state.read_text(encoding="utf-8"))
        tokens, step = data.get("num_input_tokens_seen") or None, data.get("global_step")
    if step is None and (m := re.fullmatch(r"step-(\d+)", model_dir.name)):
        step = int(m.group(1))
    return {"tokens_seen": int(tokens) if tokens is not None else None,
            "step": int(step) if step is not None else None}


def export_checkpoint_on_the_fly(checkpoint_dir: Path) -> Path:
    """``outputs/<run>/checkpoints/step-N`` -> ``outputs/<run>/export/step-N``, exporting it when missing.

    The export is what the pretraining loop writes anyway; when it is not there, this is the one call into
    the run folder's own code: ``tinyllama.checkpoints.export_checkpoint(checkpoint_dir, out_dir)``.
    """
    out = checkpoint_dir.parent.parent / "export" / checkpoint_dir.name
    if is_model_folder(out):
        return out
    from ..checkpoints import export_checkpoint

    log.info("exporting %s to %s", checkpoint_dir, out)
    export_checkpoint(checkpoint_dir, out)
    if not is_model_folder(out):
        raise FileNotFoundError(f"export of {checkpoint_dir} did not produce a model folder at {out}")
    return out


def resolve_model(model: str | os.PathLike) -> ResolvedModel:
    """Check MODEL before anything is loaded: a clear error for a missing path or an uncached Hub id offline."""
    model = str(model)
    if not model:
        raise ValueError("MODEL is empty: give a model folder, a training checkpoint or a Hub id")
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"MODEL {model} is a file; give a model folder (config.json + *.safetensors)")
        path = path.resolve()
        if path.parent.name == "checkpoints" and not is_model_folder(path):
            path = export_checkpoint_on_the_fly(path)
        if not is_model_folder(path):
            raise FileNotFoundError(
                f"{model} is not a model folder: expected config.json and *.safetensors in it (a training "
                f"checkpoint is read as outputs/<run>/checkpoints/step-N, through its export)")
        if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
            raise FileNotFoundError(f"{model} has no tokenizer (tokenizer.json / tokenizer.model): save the "
                                    f"tokenizer with the model")
        if "," in str(path):
            raise ValueError(f"{path}: lm-eval's --model_args cannot take a path with a comma; move or link it")
        meta = read_training_metadata(path)
        run_dir = path.parent.parent if path.parent.name == "export" else None
        return ResolvedModel(source=str(path), name=path.name, local=True, run_dir=run_dir, **meta)
    if not is_hub_id(model):
        raise FileNotFoundError(f"model not found: {model} (no such folder). MODEL is a model folder, a training "
                                f"checkpoint (outputs/<run>/checkpoints/step-N) or a Hub id (owner/name)")
    if offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            raise FileNotFoundError(f"{model} looks like a Hub id, but HF_HUB_OFFLINE=1 and it is not in the local "
                                    f"Hugging Face cache: download it first, or pass a local model folder")
    return ResolvedModel(source=model, name=model.replace("/", "__"), local=False)


def model_chat_template(source: str) -> str | None:
    """The chat template the model's tokenizer carries (what lm-eval's --apply_chat_template uses), or None: a base
    model has none. Reads the tokenizer only (a Hub id: from the cache or the Hub, as lm-eval would)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source).chat_template or None
