"""Checkpoints (complete training state, for resume) and exports (Hugging Face model folders, for everything else).

Layout (README.md, "Run folder"):
    <run>/checkpoints/step-000500/   accelerate ``save_state`` + ``train_state.json`` + ``model_config.json``
    <run>/export/step-000500/        safetensors, config.json, generation_config.json, tokenizer, model card,
                                     ``training_metadata.json`` (step, tokens_seen, stage, mixture, data_dir,
                                     lr_step_offset)
    <run>/export/final -> step-...   what the next stage, SFT and evaluation read

A checkpoint is written into ``.tmp-step-000500`` and renamed into place only when every rank has finished and
``train_state.json`` is in it, so a folder named ``step-*`` is always complete; resume never sees a partial one.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .tokenizer import save_tokenizer
from .utils import TMP_PREFIX, fsync_dir, atomic_dir, atomic_write_text, fsync_tree

log = logging.getLogger(__name__)

STEP_RE = re.compile(r"^step-(\d+)$")
STATE_FILE = "train_state.json"
METADATA_FILE = "training_metadata.json"


@dataclass
class TrainState:
    """What the loop needs beyond model/optimizer/scheduler/RNG to continue exactly."""

    step: int = 0  # optimizer steps done
    samples: int = 0  # global samples consumed (the data position)
    tokens: int = 0  # tokens trained on in this run
    skipped_steps: int = 0  # steps skipped for a non-finite loss or gradient
    consecutive_nonfinite: int = 0
    # the log window open at the checkpoint, summed over every rank: [loss sum, micro-batches, samples per source...]
    # (recipes/pretrain.py's Interval), so the first log line after a resume averages the same steps as an
    # uninterrupted run's, on any number of processes
    log_window: list | None = None

    @classmethod
    def read(cls, folder: Path) -> "TrainState":
        return cls(**json.loads((Path(folder) / STATE_FILE).read_text()))


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` by step (``.tmp-*`` folders and folders without a state are ignored)."""
    if not Path(root).is_dir():
        return []
    found = []
    for p in Path(root).iterdir():
        m = STEP_RE.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def find_resume_checkpoint(resume: str | None, root: Path) -> Path | None:
    if resume is None:
        return None
    if resume == "auto":
        found = complete_checkpoints(root)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"'resume': {path} is not a complete checkpoint (no {STATE_FILE})")
    return path


UNIVERSAL = "universal"  # <checkpoint>/universal/: DeepSpeed's universal conversion of the checkpoint's ZeRO state
FORMATS = {"plain": "one process or DDP", "zero": "DeepSpeed ZeRO-1/2", "zero3": "DeepSpeed ZeRO-3", "fsdp": "FSDP"}


def checkpoint_layout(folder: Path) -> tuple[str, int]:
    """(format, number of processes) of a checkpoint folder, read from the files accelerate's save_state wrote:
    ``model.safetensors`` (one process or DDP), ``pytorch_model/`` (DeepSpeed; ZeRO-3 writes one model-states file
    per rank), ``pytorch_model_fsdp_0/`` (FSDP, torch.distributed.checkpoint); one ``random_states_<rank>.pkl`` per
    process."""
    folder = Path(folder)
    ds = folder / "pytorch_model"
    if ds.is_dir():
        kind = "zero3" if any(ds.glob("zero_pp_rank_*_model_states.pt")) else "zero"
    elif (folder / "pytorch_model_fsdp_0").is_dir():
        kind = "fsdp"
    else:
        kind = "plain"
    return kind, len(list(folder.glob("random_states_*.pkl")))


def accelerator_format(accelerator) -> str:
    """The checkpoint format this launch writes (:data:`FORMATS`)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        stage = accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage")
        return "zero3" if stage == 3 else "zero"
    return "fsdp" if accelerator.distributed_type == DistributedType.FSDP else "plain"


@dataclass(frozen=True)
class ResumeSource:
    folder: Path  # the checkpoint: train_state.json, model_config.json, the engine's state
    load_dir: Path  # what accelerate's load_state reads: the folder, or its DeepSpeed universal conversion
    universal: bool = False  # DeepSpeed must be configured to load a universal checkpoint (before prepare)


def universal_command(folder: Path) -> str:
    """DeepSpeed's own converter, writing the universal checkpoint a resume on another world size reads."""
    return (f"python -m deepspeed.checkpoint.ds_to_universal --inject_missing_state --input_folder "
            f"{folder}/pytorch_model --output_folder {folder}/{UNIVERSAL}/pytorch_model")


def resume_source(resume: str | None, root: Path, fmt: str, world_size: int) -> ResumeSource | None:
    """What a resume reads, decided before any work (before the model is built and DeepSpeed configured).

    - the same engine and number of processes: the checkpoint itself;
    - one process or DDP on another number of processes: the checkpoint itself (one copy of model and optimizer);
    - FSDP on another number of processes: the checkpoint itself (torch.distributed.checkpoint reshards on load);
    - DeepSpeed ZeRO on another number of processes: its optimizer state is partitioned by rank, and DeepSpeed
      re-partitions it only from its universal format; a checkpoint converted by :func:`universal_command` is read
      through it, otherwise one message naming that command;
    - another engine: refused (each engine reads only its own format); init_from takes the weights of any of them.
    """
    folder = find_resume_checkpoint(resume, root)
    if folder is None:
        return None
    saved_fmt, saved_world = checkpoint_layout(folder)
    if saved_fmt != fmt:
        raise ValueError(
            f"'resume': {folder} was written under {FORMATS[saved_fmt]} and this launch runs {FORMATS[fmt]}: a "
            "checkpoint resumes only under the engine that wrote it (its optimizer state is in that engine's "
            "format). Launch with the accelerate config of the run, or start a new run from its weights with "
            f"--init_from {folder}")
    if saved_world == world_size or fmt not in ("zero", "zero3"):
        return ResumeSource(folder, folder)
    universal = folder / UNIVERSAL
    if (universal / "latest_universal").is_file():  # (written last by the converter: the conversion is whole)
        return ResumeSource(folder, universal, universal=True)
    raise ValueError(
        f"'resume': {folder} was written by {saved_world} processes under {FORMATS[fmt]} and this launch has "
        f"{world_size}. DeepSpeed re-partitions its optimizer state for another number of processes only from its "
        f"universal checkpoint: convert this one once (on one machine, no GPU needed) with\n    "
        f"{universal_command(folder)}\nthen run this command again. Or launch {saved_world} processes")


def _remove(path: Path) -> None:
    """Delete a folder so that a half-deleted one never looks complete: rename it aside first."""
    doomed = path.parent / f"{TMP_PREFIX}del-{path.name}"
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def clean_stale_tmp(root: Path) -> None:
    """Remove leftovers of a killed write (``.tmp-*``) before writing new ones; main process only."""
    if Path(root).is_dir():
        for p in Path(root).iterdir():
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def save_checkpoint(accelerator, root: Path, state: TrainState, model_config, keep_last: int) -> Path:
    """Save the complete training state of ``state.step``; every rank calls this."""
    root = Path(root)
    final = root / step_name(state.step)
    tmp = root / f"{TMP_PREFIX}{final.name}"
    # A leftover .tmp folder of a killed run was removed at start-up (clean_stale_tmp), before any barrier; here every
    # rank may create the folder (accelerate's save_state does too), so no rank can race another's mkdir.
    tmp.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            missing = [f"random_states_{i}.pkl" for i in range(accelerator.num_processes)
                       if not (tmp / f"random_states_{i}.pkl").is_file()]
            if missing:  # every rank's part must be there before the checkpoint is marked complete
                raise RuntimeError(f"checkpoint {final}: rank files missing after save_state: {missing}")
            model_config.to_json_file(str(tmp / "model_config.json"))
            atomic_write_text(tmp / STATE_FILE, json.dumps(asdict(state), indent=2))  # last: marks completeness
            fsync_tree(tmp)
    except (OSError, RuntimeError) as e:  # a full disk (or quota) mid-write: say so, keep the previous checkpoint
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # drop the partial one
        # torch.save reports a full disk as RuntimeError("... PytorchStreamWriter failed writing file ...")
        torch_write_failed = isinstance(e, RuntimeError) and "failed writing file" in str(e)
        if not (torch_write_failed or isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)):
            raise
        previous = complete_checkpoints(root)
        raise OSError(getattr(e, "errno", None) or errno.ENOSPC,
                      f"no space left on device while writing checkpoint {final} ({e}); the partial "
                      "checkpoint was removed and " + (f"the previous checkpoint {previous[-1][1]} is intact"
                                                        if previous else "no earlier checkpoint exists") +
                      ": free space, then resume with --resume auto") from None
    if accelerator.is_main_process:
        if final.exists():  # the same step saved again (e.g. after a resume): replace only once the new one is whole
            _remove(final)
        os.replace(tmp, final)
        fsync_dir(root)
        for _, old in complete_checkpoints(root)[:-keep_last]:
            _remove(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, source: ResumeSource) -> TrainState:
    folder = source.folder
    saved = Path(folder) / "model_config.json"
    if saved.is_file() and accelerator._models:  # another model size: say so before torch's size-mismatch wall
        from transformers import LlamaConfig

        from .model import check_same_architecture

        model_config = accelerator.unwrap_model(accelerator._models[0]).config
        check_same_architecture(model_config, LlamaConfig.from_json_file(str(saved)), "of this run",
                                f"checkpoint {folder} ('resume')")
    accelerator.load_state(str(source.load_dir))
    return TrainState.read(folder)


def export_model(accelerator, model, tokenizer, out_dir: Path, metadata: dict, model_card: str | None = None) -> Path:
    """Write a Hugging Face model folder that ``AutoModelForCausalLM.from_pretrained`` loads (ZeRO-3 included:
    ``get_state_dict`` gathers the shards). Every rank calls this; the main process writes, atomically."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
        with atomic_dir(out_dir) as tmp:
            unwrapped.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
            save_tokenizer(tokenizer, tmp)  # with its tokenizer.model
            atomic_write_text(tmp / METADATA_FILE, json.dumps(metadata, indent=2))
            if model_card:
                atomic_write_text(tmp / "README.md", model_card)
    accelerator.wait_for_everyone()
    return Path(out_dir)


def point_final(export_root: Path, target: Path) -> Path:
    """``export/final`` -> ``target`` (a relative symlink, replaced atomically)."""
    link = Path(export_root) / "final"
    tmp = Path(export_root) / f"{TMP_PREFIX}final"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(Path(target).name, tmp)
    os.replace(tmp, link)
    return link


def rotate_exports(export_root: Path, keep_last: int, protect: set[Path] = frozenset()) -> None:
    """Keep the newest ``keep_last`` step exports, the one ``final`` points to, and any still being uploaded."""
    root = Path(export_root)
    final = (root / "final").resolve() if (root / "final").exists() else None
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := STEP_RE.match(p.name)) and p.is_dir())
    keep = {p.resolve() for p in protect} | ({final} if final else set())
    for _, p in steps[:-keep_last]:
        if p.resolve() not in keep:
            _remove(p)


# -----------------------------------------------------------------------------------------------------------------
def checkpoint_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """Full fp32 model weights from a checkpoint folder written by any backend (no pickle for plain weights)."""
    folder = Path(folder)
    plain = folder / "model.safetensors"
    if plain.is_file():
        from safetensors.torch import load_file

        return load_file(str(plain))
    ds = folder / "pytorch_model"
    if ds.is_dir():  # DeepSpeed ZeRO: merge the partitioned fp32 master weights
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(folder), tag="pytorch_model")
    fsdp = next(iter(sorted(folder.glob("pytorch_model_fsdp_0"))), None)
    if fsdp is not None:  # FSDP sharded (torch.distributed.checkpoint)
        import tempfile

        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp:
            dcp_to_torch_save(str(fsdp), f"{tmp}/model.pt")
            sd = torch.load(f"{tmp}/model.pt", weights_only=True)
        return sd.get("model", sd)
    raise FileNotFoundError(f"{folder}: no model weights found (model.safetensors, pytorch_model/ or "
                            "pytorch_model_fsdp_0/); is it a checkpoint folder?")


def export_checkpoint(checkpoint_dir: Path, out_dir: Path, tokenizer=None) -> Path:
    """Turn a checkpoint folder into a Hugging Face model folder offline (no launcher, one process)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    checkpoint_dir = Path(checkpoint_dir)
    if not (checkpoint_dir / STATE_FILE).is_file():
        raise FileNotFoundError(f"{checkpoint_dir} is not a complete checkpoint (no {STATE_FILE})")
    config = LlamaConfig.from_json_file(str(checkpoint_dir / "model_config.json"))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    sd = checkpoint_state_dict(checkpoint_dir)
    model.load_state_dict(sd, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    state = TrainState.read(checkpoint_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp)
        elif (checkpoint_dir / "tokenizer").is_dir():
            for f in (checkpoint_dir / "tokenizer").iterdir():
                shutil.copy2(f, tmp / f.name)
        metadata = {"step": state.step, "tokens_seen": state.tokens, "source_checkpoint": str(checkpoint_dir),
                    **_run_metadata(checkpoint_dir.parent.parent / "config.yaml")}
        atomic_write_text(tmp / METADATA_FILE, json.dumps(metadata, indent=2))
    return Path(out_dir)


def _run_metadata(run_config: Path) -> dict:
    """What the training loop's exports record about their run (``Checkpointer.metadata``), read back from the run's
    saved config.yaml: so an export made offline still says where its learning-rate schedule stopped
    (``lr_step_offset: continue``) and what data it was trained on (the evaluation report's contamination marks)."""
    if not run_config.is_file():
        return {}
    import yaml

    cfg = yaml.safe_load(run_config.read_text(encoding="utf-8")) or {}
    out = {k: cfg[k] for k in ("stage", "run_name", "mixture", "init_from", "lr_step_offset") if k in cfg}
    if cfg.get("teacher"):  # (the loop's exports: tinyllama.training.checkpointer.distillation_metadata)
        out["teacher"] = cfg["teacher"]
        out["distillation"] = {"alpha": cfg.get("distill_alpha"), "temperature": cfg.get("distill_temperature"),
                               "top_k": cfg.get("distill_top_k")}
    data_dir = cfg.get("data_dir")
    if isinstance(data_dir, str) and Path(data_dir).is_dir():  # (relative paths: to the current directory)
        out["data_dir"] = str(Path(data_dir).resolve())
    return out
