"""The pieces of a training step that the recipe and the benchmarks share (so a benchmark measures what training
runs): the Accelerator, the model with its options, the loss of one micro-batch and one optimizer step."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
from dataclasses import dataclass

import torch

from .. import environment
from ..model import build_model, init_weights, load_model_config, load_weights
from ..checkpoints import STATE_FILE, checkpoint_state_dict

log = logging.getLogger(__name__)


def make_accelerator(args, project_dir=None):
    """An Accelerator for the launcher's setup. On a machine without CUDA the process group uses gloo (DeepSpeed
    otherwise sees the launcher's world size while accelerate sees 1), and the world size is checked against the
    launcher's, so a silent single-process run of a multi-process launch cannot happen."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, ProjectConfiguration

    trackers = [t for t in args.report_to if t != "none"]
    expected = environment.world_size()
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(project_dir), logging_dir=str(project_dir / "logs"))
        if project_dir else None,
        kwargs_handlers=process_group_kwargs(),
    )
    if accelerator.num_processes != expected:
        raise RuntimeError(
            f"the launcher started {expected} processes but accelerate sees {accelerator.num_processes}: on CPU use "
            "`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N` or torchrun "
            "(configs/accelerate/cpu.yaml)")
    if environment.launched_with_fsdp() and \
            accelerator.distributed_type != DistributedType.FSDP:  # accelerate falls back to DDP without saying so
        raise ValueError(
            f"the accelerate config asks for FSDP, but accelerate set up {accelerator.distributed_type.value}: its "
            "FSDP needs CUDA GPUs. On CPU use DeepSpeed ZeRO-3 (configs/accelerate/cpu-deepspeed-zero3.yaml) or "
            "DDP (configs/accelerate/cpu.yaml)")
    if accelerator.num_processes > 1 and accelerator.distributed_type == DistributedType.NO:  # (see
        # tinyllama.utils.complete_cpu_launch, which the recipes call first)
        raise RuntimeError(
            f"{accelerator.num_processes} processes but accelerate's distributed type is NO: they would train "
            "independently, with no gradient averaging and no barriers; on CPU set ACCELERATE_USE_CPU=true")
    return accelerator


def process_group_kwargs(deepspeed: bool | None = None) -> list:
    """gloo for a distributed run without CUDA (a process group is needed with several processes, or DeepSpeed)."""
    from accelerate import InitProcessGroupKwargs

    if deepspeed is None:
        deepspeed = environment.launched_with_deepspeed()
    distributed = environment.world_size() > 1 or deepspeed
    return [InitProcessGroupKwargs(backend="gloo")] if distributed and not torch.cuda.is_available() else []


def is_deepspeed(accelerator) -> bool:
    return accelerator.state.deepspeed_plugin is not None


def fill_deepspeed_config(accelerator, args, grad_accum: int, load_universal: bool = False) -> None:
    """Fill the DeepSpeed config's ``auto`` values from the recipe (we pass no dataloader to ``prepare``);
    ``load_universal``: the resume reads a universal checkpoint (another number of processes)."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    world = accelerator.num_processes
    values = {
        "train_micro_batch_size_per_gpu": args.micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": args.micro_batch_size * grad_accum * world,
        "gradient_clipping": args.max_grad_norm,
    }
    config = plugin.deepspeed_config
    for key, value in values.items():
        if config.get(key, "auto") == "auto":
            config[key] = value
        elif config[key] != value:
            raise ValueError(f"DeepSpeed config sets {key}={config[key]} but the recipe needs {value}; set it to "
                             "'auto' in the DeepSpeed JSON")
    zero = config.get("zero_optimization", {})
    if zero.get("stage") == 3 and zero.get("stage3_gather_16bit_weights_on_model_save", "auto") == "auto":
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # exports need whole weights
    if load_universal:
        config.setdefault("checkpoint", {})["load_universal"] = True
    plugin.gradient_accumulation_steps = grad_accum
    accelerator.gradient_accumulation_steps = grad_accum


def is_checkpoint(path) -> bool:
    return os.path.isfile(os.path.join(str(path), STATE_FILE))


@contextlib.contextmanager
def built_as_configured(accelerator=None):
    """Build the model the way the accelerate config asks: under DeepSpeed ZeRO-3 with ``zero3_init_flag: true``,
    partitioned while it is built (transformers' deepspeed.zero.Init: for models larger than one device), otherwise
    whole on every rank and partitioned by ``prepare``. accelerate registers its DeepSpeed config with transformers
    whatever the flag (``DeepSpeedPlugin.set_deepspeed_weakref``), and transformers builds under zero.Init whenever
    one is registered; so with the flag false the registration is lifted while the model is built, and put back."""
    plugin = getattr(getattr(accelerator, "state", None), "deepspeed_plugin", None)
    if plugin is None or plugin.zero3_init_flag or getattr(plugin, "dschf", None) is None:
        yield
        return
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        set_hf_deepspeed_config(plugin.dschf)


def setup_model(args, accelerator=None):
    """Build the model (fresh, from a model folder/Hub id, or from a checkpoint folder) and apply the options."""
    check_liger(args)  # before anything loads
    with built_as_configured(accelerator):
        model = _build(args)
    model.config.use_cache = False
    if args.use_liger_kernel:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True,
                                        fused_linear_cross_entropy=True, cross_entropy=False)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _build(args):
    if args.init_from and is_checkpoint(args.init_from):
        model = build_model(os.path.join(args.init_from, "model_config.json"),
                            attn_implementation=args.attn_implementation, trust_remote_code=False)
        if args.model_config:
            from ..model import check_same_architecture

            check_same_architecture(load_model_config(args.model_config), model.config, args.model_config,
                                    args.init_from)
        load_weights(model, checkpoint_state_dict(args.init_from), args.init_from)
        return model
    # fp32 weights whatever the file holds (a Hub checkpoint may be bf16): autocast keeps fp32 masters
    model = build_model(args.model_config, init_from=args.init_from, attn_implementation=args.attn_implementation,
                        trust_remote_code=args.trust_remote_code, seed=args.seed,
                        dtype=torch.float32 if args.init_from else None)
    if not args.init_from:  # from scratch: TinyLlama's initialisation unless the config says otherwise
        init_weights(model, args.init, seed=args.seed)
    return model


def check_liger(args) -> None:
    """``use_liger_kernel`` needs CUDA and liger-kernel, and is refused under DeepSpeed ZeRO-3: Liger's fused linear
    cross-entropy reads ``lm_head.weight`` directly, outside the lm_head module's forward, where ZeRO-3 gathers it, so
    under ZeRO-3 it would get this rank's empty shard and fail at the first step (TRL hit the same and gathers the
    weight in its own trainers). One message before the model loads instead."""
    if not args.use_liger_kernel:
        return
    if deepspeed_zero_stage() == 3:
        raise ValueError("'use_liger_kernel' does not work under DeepSpeed ZeRO-3 (Liger's fused cross-entropy reads "
                         "the sharded lm_head weight directly): use ZeRO-2 (configs/accelerate/deepspeed-zero2.yaml) "
                         "or DDP, or set use_liger_kernel: false")
    if importlib.util.find_spec("liger_kernel") is None or not torch.cuda.is_available():
        raise ValueError("'use_liger_kernel' needs a CUDA GPU and the liger-kernel package "
                         "(pip install -r requirements-gpu.txt)")


def deepspeed_zero_stage() -> int | None:
    """The ZeRO stage of this process's DeepSpeed setup (accelerate's, made by the Accelerator), or None."""
    from accelerate.state import AcceleratorState

    if not AcceleratorState._shared_state:  # no Accelerator yet: (AcceleratorState() would make a default one)
        return None
    plugin = AcceleratorState().deepspeed_plugin
    return None if plugin is None else int(plugin.zero_stage)


def uses_varlen_attention(model) -> bool:
    """Whether the model's attention kernel takes packed sequences as ``cu_seq_lens`` (flash_attention_2/3, hub
    flash kernels, torch_varlen) rather than as a mask built from the position ids (sdpa, eager, flex_attention)."""
    from accelerate.utils import extract_model_from_parallel

    config = getattr(extract_model_from_parallel(model), "config", None)
    attn = str(getattr(config, "_attn_implementation", ""))
    return "flash" in attn or attn == "torch_varlen"


def packed_sequence_kwargs(position_ids: torch.Tensor, device) -> dict:
    """``cu_seq_lens_q/k`` and ``max_length_q/k`` of the documents of a micro-batch read as one sequence of B*T
    tokens: a document starts where its position id is 0, and every sample starts one. Computed from the loader's
    position ids on the host, so the model needs no ``.nonzero()``/``.item()`` of its own (transformers derives them
    that way when they are missing: a device sync per step, and a graph break under torch.compile) and flash
    attention needs no batch flattened to one row."""
    starts = position_ids.cpu() == 0
    starts[:, 0] = True
    offsets = torch.cat([starts.reshape(-1).nonzero().flatten(), torch.tensor([starts.numel()])]).to(torch.int32)
    longest = int((offsets[1:] - offsets[:-1]).max())
    offsets = offsets.to(device, non_blocking=True)
    return {"cu_seq_lens_q": offsets, "cu_seq_lens_k": offsets, "max_length_q": longest, "max_length_k": longest}


def model_inputs(batch: dict, document_masking: bool, device, varlen: bool = False) -> dict:
    """What one micro-batch of ``seq_len + 1``-token samples hands the model.

    Inputs are tokens 0..T-1 and targets 1..T (TinyLlama's layout), passed as ``shift_labels`` (already aligned),
    so the model's own loss function is used and Liger's fused linear cross-entropy can replace it. With document
    masking the position ids restart at each document (and at each sample); transformers turns them into a
    block-diagonal causal mask (sdpa, eager, flex), and a varlen kernel (``varlen``: flash_attention_2,
    torch_varlen) is handed the document boundaries themselves (``packed_sequence_kwargs``), so no token attends
    across a document boundary. The loss is the same mean over the same B*T targets whatever the kernel.
    """
    ids = batch["input_ids"].to(device, non_blocking=True)
    inputs, targets = ids[:, :-1], ids[:, 1:].contiguous()
    kwargs = {"input_ids": inputs, "labels": targets, "shift_labels": targets, "use_cache": False}
    if document_masking:
        positions = batch["position_ids"][:, :-1]
        kwargs["position_ids"] = positions.to(device, non_blocking=True)
        if varlen:
            kwargs.update(packed_sequence_kwargs(positions, device))
    return kwargs


def forward_loss(model, batch: dict, document_masking: bool, device) -> torch.Tensor:
    """Mean next-token loss of one micro-batch (see ``model_inputs`` for what the model is handed)."""
    varlen = document_masking and uses_varlen_attention(model)
    return model(**model_inputs(batch, document_masking, device, varlen)).loss


@dataclass
class StepResult:
    loss_sum: torch.Tensor  # float64 sum of this rank's micro-batch losses, on the device (no sync); 0 when skipped
    micro_batches: int  # how many micro-batch losses loss_sum holds (0 when skipped)
    grad_norm: torch.Tensor | float | None  # before clipping; None when the step was skipped before the backward
    skipped: bool  # a non-finite loss or gradient: no update was made (the step's data is consumed anyway)
    parts_sum: torch.Tensor | None = None  # with a teacher: float64 [CE sum, KL sum] of the micro-batches in loss_sum


def train_step(model, optimizer, accelerator, batches, accum: int, document_masking: bool, max_grad_norm: float,
               source_counts: torch.Tensor, distiller=None) -> StepResult:
    """One optimizer step over ``accum`` micro-batches, with the same decision on every rank.

    A non-finite loss on any rank skips the update (the step's remaining micro-batches are read, so the data
    position stays a function of the step, and not trained on); so does a non-finite gradient norm. DeepSpeed
    updates the weights inside the last micro-batch's backward, so there the decision is taken before that backward
    (one all-reduce per step); elsewhere it is taken after the backward, before ``optimizer.step()``.
    ``source_counts`` (on the host) counts the samples read, by source. The loss is returned as a float64 sum of
    micro-batch losses, not a mean: sums of float32 values in float64 are exact, so the logged mean over a window is
    the same number however the window's micro-batches were split over ranks and steps (a resume on another world
    size logs what an uninterrupted run logs). ``distiller`` (tinyllama.training.distill): the loss mixes the CE with the KL to a
    teacher, and the two parts are summed beside it (``parts_sum``).
    """
    deepspeed = is_deepspeed(accelerator)
    device = accelerator.device
    accelerator.step = 0  # micro-step counter of accumulate(): sync on the last micro-batch of this step
    nonfinite = torch.zeros((), device=device)
    step_loss = torch.zeros((), device=device, dtype=torch.float64)
    step_parts = torch.zeros(2, device=device, dtype=torch.float64) if distiller is not None else None
    skipped, grad_norm = False, None
    for micro in range(accum):
        batch = next(batches)
        source_counts += torch.bincount(batch["source"], minlength=len(source_counts))
        if skipped:
            continue  # the rest of a skipped step: its data is consumed, not trained on
        with accelerator.accumulate(model):
            if distiller is None:
                loss = forward_loss(model, batch, document_masking, device)
            else:
                loss, ce, kl = distiller.loss(model, batch, document_masking, device)
            nonfinite += ~torch.isfinite(loss.detach())
            if micro == accum - 1 and deepspeed:  # DeepSpeed steps inside this backward: decide before it
                skipped = accelerator.reduce(nonfinite, "sum").item() > 0
                if skipped:
                    model.optimizer.zero_grad()
                    continue
            accelerator.backward(loss)
            step_loss += loss.detach().double()
            if step_parts is not None:
                step_parts += torch.stack([ce, kl]).double()
    if deepspeed:
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm) if not skipped else None
        skipped = skipped or grad_norm is None or not math.isfinite(float(grad_norm))
    else:
        skipped = accelerator.reduce(nonfinite, "sum").item() > 0
        if not skipped:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm or float("inf"))
            skipped = not torch.isfinite(grad_norm).item()
        if not skipped:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return StepResult(step_loss, 0 if skipped else accum, grad_norm, skipped, step_parts)
