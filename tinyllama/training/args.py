"""The pretraining recipe's arguments: one typed dataclass, read from YAML with command-line overrides.

Every number that defines a run lives in its YAML (configs/pretrain, configs/continual, configs/cooldown); the
defaults here are TinyLlama v1.0's (docs/reference.md, "Pretraining (v1.0, 3T tokens)").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, Optional, Union

from .. import environment
from ..utils import is_hub_id, repo_root

# tinyllama.model.ATTENTION_CHOICES (this module does not import torch; tests/test_model.py keeps the two equal)
ATTENTION_CHOICES = ("auto", "flash_attention_2", "torch_varlen", "flex_attention", "sdpa", "eager")

DEMO_CONFIG = repo_root() / "configs" / "pretrain" / "demo.yaml"
CONTINUE = "continue"  # lr_step_offset: continue = where init_from's learning-rate schedule stopped


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class PretrainArgs:
    # ---- run --------------------------------------------------------------------------------------------------
    run_name: str = field(default="demo", metadata=_help("name of the run; outputs go to output_dir"))
    output_dir: Optional[str] = field(default=None, metadata=_help("run folder (default: outputs/<run_name>)"))
    seed: int = field(default=3407, metadata=_help("seed for weights and the data order (TinyLlama: 3407)"))
    stage: str = field(default="pretrain", metadata=_help("stage label written to exports and the model card"))

    # ---- model ------------------------------------------------------------------------------------------------
    model_config: Optional[str] = field(default=None, metadata=_help(
        "architecture: a name in configs/model (tinyllama-1.1b, demo, tiny), a JSON path, or a Hub id; with "
        "init_from, optional (then checked against the weights)"))
    init_from: Optional[str] = field(default=None, metadata=_help(
        "start from these weights (an exported model folder, a checkpoint folder of another run, or a Hub id); "
        "not the same as resume, which continues this run"))
    init_optimizer: bool = field(default=False, metadata=_help(
        "with init_from a checkpoint folder: carry its optimizer state over (default: fresh optimizer)"))
    export_initial: bool = field(default=False, metadata=_help(
        "export the weights this run starts from to export/initial before the first update (to check what "
        "init_from loaded; not on resume)"))
    init: Literal["tinyllama", "hf"] = field(default="tinyllama", metadata=_help(
        "weights of a from-scratch run: tinyllama (lit_gpt's init as TinyLlama used it: N(0, sqrt(2/(5d))), output "
        "projections N(0, 1/sqrt(d)/L)) or hf (transformers' N(0, 0.02) everywhere); ignored with init_from"))
    tokenizer: str = field(default="data/demo/tokenizer", metadata=_help("tokenizer folder or Hub id"))
    attn_implementation: str = field(default="auto", metadata=_help(
        "auto | flash_attention_2 | torch_varlen | flex_attention | sdpa | eager: a kernel named here must be "
        "available (else the run stops with why); auto is flash_attention_2 where flash-attn is installed, else "
        "sdpa, and logs which (docs/testing.md, 'Attention kernels')"))
    document_masking: bool = field(default=False, metadata=_help(
        "no attention across documents in a packed sample (position_ids restart at each document; TinyLlama "
        "did not mask)"))
    gradient_checkpointing: bool = field(default=False, metadata=_help("activation checkpointing"))
    compile: bool = field(default=False, metadata=_help("torch.compile the model"))
    use_liger_kernel: bool = field(default=False, metadata=_help(
        "Liger's fused RMSNorm, SwiGLU, RoPE and linear cross-entropy (GPU, liger-kernel installed)"))
    trust_remote_code: bool = field(default=False, metadata=_help("allow model code from the Hub (off)"))

    # ---- distillation (docs/distillation.md) -------------------------------------------------------------------
    teacher: Optional[str] = field(default=None, metadata=_help(
        "distil from this model (a model folder or Hub id with the student's vocabulary, checked before any work): "
        "loss = (1 - distill_alpha) * CE + distill_alpha * T^2 * KL(teacher || student) at temperature T"))
    distill_alpha: float = field(default=0.5, metadata=_help(
        "with teacher: the weight of the KL part of the loss, in [0, 1] (0: plain CE, the teacher only watched)"))
    distill_temperature: float = field(default=1.0, metadata=_help(
        "with teacher: softmax temperature T of both models in the KL (> 0; the KL is scaled by T^2)"))
    distill_top_k: Optional[int] = field(default=None, metadata=_help(
        "with teacher: the KL over the teacher's k most likely tokens per position plus one outcome for the rest "
        "of each model's mass (default: the whole vocabulary)"))

    # ---- data -------------------------------------------------------------------------------------------------
    data_dir: str = field(default="data/demo/tokenized", metadata=_help(
        "folder of prepared sources (scripts/prepare_data.py), one sub-folder per source"))
    prepare_config: Optional[str] = field(default=None, metadata=_help(
        "a data config to prepare data_dir with first when it is missing or incomplete (the demo does this)"))
    mixture: dict = field(default_factory=lambda: {"slimpajama": 0.693584, "starcoderdata": 0.306416},
                          metadata=_help("source name -> weight, or -> {weight, start_weight, ramp_tokens}"))
    seq_len: int = field(default=2048, metadata=_help("tokens per sample (context length)"))
    micro_batch_size: int = field(default=8, metadata=_help("sequences per device per forward pass"))
    global_batch_size: int = field(default=1024, metadata=_help(
        "sequences per optimizer step, all devices; gradient accumulation = global / (processes x micro)"))
    batch_schedule: list[dict] = field(default_factory=list, metadata=_help(
        "batch-size changes: a list of {step: N, global_batch_size: B} (e.g. v1.1's cooldown)"))
    num_workers: int = field(default=1, metadata=_help("dataloader worker processes per rank"))

    # ---- optimizer and schedule -------------------------------------------------------------------------------
    learning_rate: float = field(default=4e-4, metadata=_help("peak learning rate"))
    min_lr: float = field(default=4e-5, metadata=_help("final learning rate"))
    warmup_steps: int = field(default=2000, metadata=_help("linear warmup steps"))
    max_steps: int = field(default=1_430_512, metadata=_help("optimizer steps of this run"))
    lr_schedule: Literal["cosine", "wsd", "constant"] = field(default="cosine", metadata=_help(
        "cosine (TinyLlama), wsd (warmup-stable-decay), constant (after warmup)"))
    lr_schedule_steps: Optional[int] = field(default=None, metadata=_help(
        "length of the cosine in steps (default: max_steps); with lr_step_offset, a stage continues a longer "
        "cosine (v1.1's cooldown)"))
    lr_step_offset: Union[int, str] = field(default=0, metadata=_help(
        "the schedule starts at this step (a continued cosine): a number, or 'continue' for where init_from's "
        "schedule stopped (its lr_step_offset + step, from the training_metadata.json of the export; a Hub id "
        "has none: give a number)"))
    decay_fraction: float = field(default=0.2, metadata=_help("wsd: fraction of steps spent decaying"))
    decay_shape: Literal["linear", "1-sqrt", "cosine"] = field(default="1-sqrt", metadata=_help(
        "wsd: shape of the final decay"))
    weight_decay: float = field(default=0.1, metadata=_help("AdamW weight decay"))
    no_decay_norm_and_embeddings: bool = field(default=False, metadata=_help(
        "exclude norms, biases and embeddings from weight decay (TinyLlama decayed everything: false)"))
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-8
    max_grad_norm: float = field(default=1.0, metadata=_help("gradient clipping (0 = off)"))
    mixed_precision: Literal["no", "bf16", "fp16"] = field(default="bf16", metadata=_help(
        "autocast precision (fp32 master weights); the demo runs in fp32 ('no') on CPU"))
    max_nonfinite_steps: int = field(default=5, metadata=_help(
        "stop after this many consecutive steps with a non-finite loss or gradient (each one is skipped)"))

    # ---- logging, evaluation, checkpoints ---------------------------------------------------------------------
    log_every: int = field(default=10, metadata=_help("steps between log lines"))
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"], metadata=_help(
        "trackers: tensorboard, wandb, or none"))
    peak_flops: Optional[float] = field(default=None, metadata=_help(
        "peak dense FLOP/s of one device for MFU (default: looked up from the GPU name)"))
    eval_every: int = field(default=1000, metadata=_help("steps between validation losses (0 = off)"))
    eval_batches: int = field(default=16, metadata=_help(
        "held-out micro-batches in each validation, split over the processes (the same samples on any number of "
        "processes)"))
    save_every: int = field(default=1000, metadata=_help("steps between checkpoints (the last step is saved too)"))
    keep_last: int = field(default=3, metadata=_help("checkpoints kept (older ones are deleted)"))
    export: bool = field(default=True, metadata=_help(
        "export each checkpoint as a Hugging Face model folder under export/ (export/final at the end)"))
    resume: Optional[str] = field(default=None, metadata=_help(
        "'auto' (newest complete checkpoint of this run, if any) or a checkpoint folder"))
    eval_suite: Optional[str] = field(default=None, metadata=_help(
        "an lm-eval suite (evaluation/suites) run on each export, logged beside the loss"))
    eval_limit: Optional[int] = field(default=None, metadata=_help("lm-eval --limit for eval_suite"))
    eval_data_dir: Optional[str] = field(default=None, metadata=_help(
        "local copies of the suite's data sets for eval_suite (offline; default: the EVAL_DATA_DIR environment "
        "variable, read once at start, as evaluation/run_lm_eval.sh reads it)"))

    # ---- Hub ----------------------------------------------------------------------------------------------------
    push_to_hub: bool = field(default=False, metadata=_help("upload exports to the Hub in the background"))
    hub_model_id: Optional[str] = field(default=None, metadata=_help("user/repo on the Hub"))
    hub_private: bool = field(default=False, metadata=_help("create the Hub repository as private"))
    hub_revision: Optional[str] = field(default=None, metadata=_help("branch to push to (default: main)"))
    hub_upload_retries: int = field(default=5, metadata=_help("attempts per upload before it is reported failed"))
    hub_retry_backoff: float = field(default=2.0, metadata=_help(
        "seconds before the second attempt of a failed upload, doubled for each further attempt"))
    hub_wait_timeout: float = field(default=600.0, metadata=_help(
        "at the end of the run, seconds to wait for uploads still running (a hung Hub cannot hold the run); "
        "unfinished ones are counted in summary.json"))

    # ---------------------------------------------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or Path("outputs") / self.run_name)

    def validate(self) -> list[str]:
        """Every cross-field problem, before any work (world size from the launcher's WORLD_SIZE)."""
        e = []
        world = environment.world_size()
        for name in ("learning_rate", "seq_len", "micro_batch_size", "global_batch_size", "max_steps",
                     "log_every", "save_every", "keep_last", "max_nonfinite_steps", "hub_upload_retries",
                     "hub_wait_timeout"):
            if getattr(self, name) <= 0:
                e.append(f"'{name}' must be positive, got {getattr(self, name)}")
        e += self._resolve_lr_step_offset()
        for name in ("min_lr", "warmup_steps", "weight_decay", "max_grad_norm", "eval_every", "lr_step_offset",
                     "num_workers", "adam_epsilon", "hub_retry_backoff"):
            if isinstance(getattr(self, name), (int, float)) and getattr(self, name) < 0:
                e.append(f"'{name}' must not be negative, got {getattr(self, name)}")
        if self.min_lr > self.learning_rate > 0:
            e.append(f"'min_lr' ({self.min_lr}) is above 'learning_rate' ({self.learning_rate})")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                e.append(f"'{name}' must be in [0, 1), got {getattr(self, name)}")
        if not 0 < self.decay_fraction <= 1:
            e.append(f"'decay_fraction' must be in (0, 1], got {self.decay_fraction}")
        if (self.lr_schedule_steps is not None and isinstance(self.lr_step_offset, int)
                and self.lr_schedule_steps < self.lr_step_offset + self.max_steps):
            e.append(f"'lr_schedule_steps' ({self.lr_schedule_steps}) is shorter than lr_step_offset + max_steps "
                     f"({self.lr_step_offset + self.max_steps})")
        for step, batch in [(0, self.global_batch_size)] + [
            (s.get("step"), s.get("global_batch_size")) for s in self.batch_schedule if isinstance(s, dict)
        ]:
            if isinstance(batch, int) and batch > 0 and self.micro_batch_size > 0 and batch % (
                    self.micro_batch_size * world):
                e.append(f"global batch {batch} (from step {step}) is not divisible by micro_batch_size "
                         f"{self.micro_batch_size} x {world} processes")
        for i, s in enumerate(self.batch_schedule):
            if not (isinstance(s, dict) and set(s) == {"step", "global_batch_size"}
                    and isinstance(s["step"], int) and s["step"] > 0
                    and isinstance(s["global_batch_size"], int) and s["global_batch_size"] > 0):
                e.append(f"'batch_schedule[{i}]' must be {{step: N>0, global_batch_size: B>0}}, got {s!r}")
        if self.push_to_hub and not self.hub_model_id:
            e.append("'push_to_hub' needs 'hub_model_id'")
        if self.resume not in (None, "auto") and not Path(self.resume).is_dir():
            e.append(f"'resume': checkpoint folder not found: {self.resume}")
        if not self.model_config and not self.init_from:
            e.append("set 'model_config' (train from scratch) or 'init_from' (start from weights)")
        if self.init_optimizer and not self.init_from:
            e.append("'init_optimizer' needs 'init_from' (a checkpoint folder)")
        elif self.init_optimizer and Path(self.init_from).is_dir() and not (
                Path(self.init_from) / "train_state.json").is_file():
            e.append(f"'init_optimizer': {self.init_from} is not a checkpoint folder (no train_state.json); an "
                     "exported model has no optimizer state: name a checkpoints/step-N folder or drop init_optimizer")
        if self.attn_implementation not in ATTENTION_CHOICES:
            e.append(f"'attn_implementation' must be one of {', '.join(ATTENTION_CHOICES)}, "
                     f"got {self.attn_implementation!r}")
        e += self._distill_problems()
        bad_trackers = set(self.report_to) - {"tensorboard", "wandb", "none"}
        if bad_trackers:
            e.append(f"'report_to' accepts tensorboard, wandb, none; got {sorted(bad_trackers)}")
        try:
            from ..data import parse_mixture

            parse_mixture(self.mixture)
        except ValueError as err:
            e.append(f"'mixture': {err}")
        return e

    def _distill_problems(self) -> list[str]:
        """The distillation settings' ranges (the teacher itself is checked at start-up: tinyllama.training.distill,
        ``check_teacher``, since a pipeline plans a stage before its teacher may exist)."""
        e = []
        if not 0 <= self.distill_alpha <= 1:
            e.append(f"'distill_alpha' must be in [0, 1], got {self.distill_alpha}")
        if not self.distill_temperature > 0:
            e.append(f"'distill_temperature' must be positive, got {self.distill_temperature}")
        if self.distill_top_k is not None and self.distill_top_k <= 0:
            e.append(f"'distill_top_k' must be positive (or unset: the whole vocabulary), got {self.distill_top_k}")
        if not self.teacher:
            defaults = {f.name: f.default for f in fields(self)}
            set_here = [n for n in ("distill_alpha", "distill_temperature", "distill_top_k")
                        if getattr(self, n) != defaults[n]]
            if set_here:
                e.append(f"{', '.join(repr(n) for n in set_here)} set without 'teacher': name the teacher model, or "
                         "drop them")
        elif self.use_liger_kernel:
            e.append("'use_liger_kernel' with 'teacher': Liger's fused cross-entropy never forms the student's "
                     "logits, which the KL to the teacher needs; set use_liger_kernel: false")
        return e

    def _resolve_lr_step_offset(self) -> list[str]:
        """``lr_step_offset: continue`` -> the number, read from init_from (:func:`continued_lr_step`). A local
        init_from that does not exist yet (a pipeline's next stage, planned before the previous one has run) stays
        ``continue`` here; the recipe resolves it at start-up (:func:`require_resolved`)."""
        if not isinstance(self.lr_step_offset, str):
            return []
        if self.lr_step_offset != CONTINUE:
            return [f"'lr_step_offset' must be a number of steps or 'continue', got {self.lr_step_offset!r}"]
        if not self.init_from:
            return ["'lr_step_offset: continue' needs 'init_from' (the model whose schedule this stage continues)"]
        if not Path(self.init_from).exists() and not is_hub_id(self.init_from):
            return []
        try:
            self.lr_step_offset = continued_lr_step(self.init_from)
        except ValueError as err:
            return [f"'lr_step_offset: continue': {err}"]
        return []


def continued_lr_step(init_from: str) -> int:
    """Where the learning-rate schedule of the run that wrote ``init_from`` stopped: its ``lr_step_offset`` plus
    the optimizer steps it took (a stage counts its own steps from 0, so for a chain of continued stages this is
    the total number of steps of every stage before). ``init_from`` is an export (``training_metadata.json``,
    tinyllama/training/checkpointer.py) or a checkpoint folder (``train_state.json``); the offset comes from the
    metadata, else from the run's ``config.yaml`` two folders up (``<run>/export/step-N``, ``<run>/checkpoints/
    step-N``: exports written before the metadata recorded it). Raises ValueError naming what is missing."""
    folder = Path(init_from)
    if not folder.is_dir():
        if not is_hub_id(init_from):
            raise ValueError(f"init_from {init_from} does not exist (the stage before has not written it yet?)")
        raise ValueError(f"init_from {init_from} is a Hub id: a published checkpoint carries no training metadata, "
                         "so where its schedule stopped is unknown here. Set lr_step_offset to a number (TinyLlama's "
                         "step counts: docs/reference.md)")
    metadata, state = folder / "training_metadata.json", folder / "train_state.json"  # checkpoint.py's file names
    source = metadata if metadata.is_file() else state if state.is_file() else None
    if source is None:
        raise ValueError(f"{init_from} has neither training_metadata.json nor train_state.json: it was not written "
                         "by recipes/pretrain.py, so where its schedule stopped is unknown. Set lr_step_offset to a "
                         "number")
    record = json.loads(source.read_text())
    offset = record.get("lr_step_offset")
    if offset is None:
        run_config = folder.parent.parent / "config.yaml"
        if run_config.is_file():
            import yaml

            offset = (yaml.safe_load(run_config.read_text()) or {}).get("lr_step_offset")
    if not isinstance(offset, int) or not isinstance(record.get("step"), int):
        raise ValueError(f"{source} records no lr_step_offset and step (an export made offline from a checkpoint, or "
                         "a folder moved away from its run's config.yaml): set lr_step_offset to a number")
    return offset + record["step"]


def _resumed_run_config(args: PretrainArgs) -> tuple[dict, Path] | None:
    """The config.yaml this run was started with, when this launch resumes it (a checkpoint exists); else None."""
    saved = args.run_dir / "config.yaml"
    if args.resume is None or not saved.is_file():
        return None
    from ..checkpoints import find_resume_checkpoint

    if find_resume_checkpoint(args.resume, args.run_dir / "checkpoints") is None:
        return None
    import yaml

    return (yaml.safe_load(saved.read_text()) or {}), saved


def require_resolved(args: PretrainArgs) -> None:
    """At the start of a run, before any work: ``lr_step_offset: continue`` has become a number (its init_from
    exists now), and a resumed run keeps the offset it started with: if init_from was retrained since, 'continue'
    would now give another number and the learning rate would jump in the middle of the stage."""
    if isinstance(args.lr_step_offset, str):
        try:
            args.lr_step_offset = continued_lr_step(args.init_from)
        except ValueError as err:
            raise ValueError(f"'lr_step_offset: continue': {err}") from None
    resumed = _resumed_run_config(args)
    if resumed is None:
        return
    before, saved = resumed[0].get("lr_step_offset"), resumed[1]
    if isinstance(before, int) and before != args.lr_step_offset:
        raise ValueError(f"'lr_step_offset': this run started with {before} ({saved}) and would resume with "
                         f"{args.lr_step_offset}: the learning rate would jump mid-stage. With 'continue', init_from "
                         f"({args.init_from}) changed since the run started; rerun the stage from its start (a new "
                         "output_dir), or resume with --lr_step_offset " + str(before))


def require_same_run(args: PretrainArgs) -> None:
    """A resume continues the run its checkpoint belongs to, or stops before any work: a setting that changes what
    is trained from here on (the global batch, the data mixture or seed, the optimizer, the learning-rate schedule,
    the precision ...) differs from the run's config.yaml -> one message naming each field and what to pass.

    What may change (:data:`RESUME_MAY_CHANGE`, and :data:`OPERATIONAL_KEYS`): how the same global batch is computed
    (micro batch, processes, kernels, checkpointing, compile), where files are (a cluster with other mounts), and
    max_steps / lr_schedule_steps as long as the learning-rate schedule stays the same."""
    resumed = _resumed_run_config(args)
    if resumed is None:
        return
    before, saved = resumed
    from dataclasses import fields

    from .schedule import LRSchedule

    now = {f.name: getattr(args, f.name) for f in fields(args)}
    skip = OPERATIONAL_KEYS | RESUME_MAY_CHANGE
    diffs = [(k, before[k], now[k]) for k in now if k not in skip and k in before and before[k] != now[k]]
    old_args = PretrainArgs(**{k: v for k, v in before.items() if k in now})
    if not diffs and LRSchedule.from_args(old_args) != LRSchedule.from_args(args):  # (max_steps stretches a cosine)
        diffs = [(k, before.get(k), now[k]) for k in ("max_steps", "lr_schedule_steps") if before.get(k) != now[k]]
    if diffs:
        changed = "; ".join(f"{k}: {b!r} -> {n!r}" for k, b, n in diffs)
        restore = " ".join(f"--{k} {_cli_value(b)}" for k, b, _ in diffs)
        raise ValueError(
            f"'resume': this launch would continue the run in {args.run_dir} on other settings ({changed}; the run's "
            f"own are in {saved}). To continue it, pass {restore}; to train with the new settings, start a new run "
            "(another output_dir) with --init_from <its checkpoint folder> (and --init_optimizer true to keep the "
            "optimizer state)")


def _cli_value(value) -> str:
    if isinstance(value, (dict, list)):
        return "'" + json.dumps(value) + "'"
    return str(value).lower() if isinstance(value, bool) else str(value)


# The fields that do not change the weights a run produces (logging, checkpoint cadence, evaluation, the Hub): the
# pipeline does not count a difference in them alone as a changed stage. (A set here, beside the fields, rather than
# in their metadata: HfArgumentParser hands every metadata key to argparse.) A new field that only changes how a run
# is watched or stored belongs here; tests/test_pipeline.py checks every name is a field.
OPERATIONAL_KEYS = frozenset({
    "run_name", "report_to", "num_workers", "log_every", "eval_every", "eval_batches", "eval_suite", "eval_limit",
    "eval_data_dir", "save_every", "keep_last", "export", "export_initial", "resume", "prepare_config", "peak_flops",
    "push_to_hub", "hub_model_id", "hub_private", "hub_revision", "hub_upload_retries", "hub_retry_backoff",
    "hub_wait_timeout"})

# The fields a resume may change (require_same_run) besides the operational ones: how the same global batch is
# computed, where the files are, what only a fresh start reads, and the step count (the learning-rate schedule is
# compared as a whole).
RESUME_MAY_CHANGE = frozenset({
    "micro_batch_size", "gradient_checkpointing", "compile", "attn_implementation", "use_liger_kernel",
    "trust_remote_code", "output_dir", "data_dir", "tokenizer", "model_config", "init_from", "init_optimizer", "init",
    "stage", "max_steps", "lr_schedule_steps"})
