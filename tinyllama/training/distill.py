"""Distillation in the pretraining loop: the student learns from the data and from a teacher's next-token
distribution in the same micro-batch (``teacher:`` in the run config; docs/distillation.md).

    loss = (1 - alpha) * CE(student, data) + alpha * T^2 * KL(teacher_T || student_T)

CE is the model's own next-token loss (the one every run trains on); ``p_T = softmax(logits / T)`` for both models;
the KL is the forward one (teacher -> student, Hinton et al. 2015), a mean over the same target positions as the CE
(labels of -100 are left out of both); T^2 keeps the KL's gradient on the CE's scale when T changes. With
``distill_top_k: k`` the KL is taken over k + 1 outcomes: the teacher's k most likely tokens, each on its own, and
"any other token", whose probability is the rest of each model's mass (1 - the sum of its top-k probabilities). The
two are still distributions, the teacher's mass outside its top k is kept (neither dropped nor renormalised onto
the k tokens), and with k = the vocabulary it is the full KL. The KL is computed in float32 whatever the models'
precision.

The teacher: a model folder or Hub id with the student's vocabulary (checked by ``check_teacher`` from the configs
and tokenizers alone, before any work), in eval mode without gradients, bf16 on a GPU (fp32 on CPU); it reads the
student's inputs (the same position ids and document boundaries, so the same document masking) and takes no random
numbers, so it is a pure function of its weights and a resume stays exact. Under DeepSpeed ZeRO-3 it is partitioned
too (``deepspeed.initialize`` with the run's ZeRO-3 config and no optimizer, as TRL's ``prepare_deepspeed`` does for
reference models); under FSDP2 it is sharded with ``fully_shard`` (as TRL's ``prepare_fsdp``), since accelerate's
``prepare_model(evaluation_mode=True)`` would keep it whole on every GPU; elsewhere (one process, DDP, ZeRO-1/2) it is
a plain module on each device, not wrapped in DDP (nothing to synchronise: it has no gradients).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..tokenizer import differing_tokens
from ..utils import is_hub_id

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


# ---- the loss (a pure function: tests/test_distill.py checks it against a hand computation) ----------------------
def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                  temperature: float = 1.0, top_k: int | None = None) -> torch.Tensor:
    """Mean over the positions with ``labels != -100`` of KL(softmax(teacher / T) || softmax(student / T)), per
    position over the whole vocabulary, or (``top_k``) over the teacher's top k tokens plus one outcome for the rest
    of the mass (module docstring). Logits ``[..., V]``, labels ``[...]``; a float32 scalar (0 with no position).

    torch's ``F.kl_div`` computes the divergence itself; written here is only what no library offers for pretraining:
    the coarsening onto the teacher's top k plus the rest (TRL's distillation losses take the whole vocabulary and
    read chat completions, not packed pretraining samples)."""
    import torch.nn.functional as F

    keep = (labels != -100).reshape(-1).float()  # a weight per position rather than a selection: no copy, no sync
    s = student_logits.reshape(-1, student_logits.shape[-1]).float()  # [N, V]
    t = teacher_logits.reshape(-1, teacher_logits.shape[-1]).float()
    if temperature != 1.0:
        s, t = s / temperature, t / temperature
    log_s, log_t = F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1)
    if top_k is not None and top_k < s.shape[-1]:
        log_t, index = log_t.topk(top_k, dim=-1)  # the teacher's k most likely tokens, per position
        log_s = log_s.gather(-1, index)
        log_t = torch.cat([log_t, _log_rest(log_t)], dim=-1)  # [N, k + 1]
        log_s = torch.cat([log_s, _log_rest(log_s)], dim=-1)
    per_position = F.kl_div(log_s, log_t, log_target=True, reduction="none").sum(-1)
    return (per_position * keep).sum() / keep.sum().clamp(min=1.0)


def _log_rest(log_p: torch.Tensor) -> torch.Tensor:
    """log(1 - sum(exp(log_p))) along the last dimension, kept as one column: the log of the mass outside the chosen
    tokens. Clamped at 1e-30 (float32 cannot tell a rest below ~1e-7 from 0 anyway), so a model with all its mass
    on the k tokens gives a finite log."""
    covered = torch.logsumexp(log_p, dim=-1, keepdim=True).clamp(max=0.0)
    return torch.log((-torch.expm1(covered)).clamp(min=1e-30))


def mix(ce: torch.Tensor, kl: torch.Tensor, alpha: float, temperature: float) -> torch.Tensor:
    """The training loss: (1 - alpha) * CE + alpha * T^2 * KL."""
    return (1.0 - alpha) * ce + alpha * temperature ** 2 * kl


# ---- the teacher: checked before any work, loaded, prepared for the engine -----------------------------------------
def student_model_config(args):
    """The student's model config, from the same source ``setup_model`` builds it from (configs only, no weights)."""
    from ..model import load_model_config
    from .core import is_checkpoint

    if args.init_from and is_checkpoint(args.init_from):
        from transformers import LlamaConfig

        return LlamaConfig.from_json_file(os.path.join(args.init_from, "model_config.json"))
    return load_model_config(args.model_config or args.init_from, args.trust_remote_code)


def teacher_model_config(name: str, trust_remote_code: bool = False):
    """The teacher's config.json, or ValueError saying why there is none (a folder without weights, a model config
    file rather than a model, a Hub id out of reach)."""
    from transformers import AutoConfig

    path = Path(name)
    if path.is_file():
        raise ValueError(f"teacher {name} is a file: name a model folder (config.json and safetensors weights) or a "
                         "Hub id; a model config alone has no weights to teach with")
    if path.is_dir():
        if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
            raise ValueError(f"teacher {name} is not a model folder: it needs config.json and *.safetensors (an "
                             "export of this repository's runs, export/final, is one)")
    elif not is_hub_id(name):
        raise ValueError(f"teacher {name} does not exist")
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ValueError(f"teacher {name}: its config could not be read ({str(e).splitlines()[0][:200]}); offline, a "
                         "Hub id must be in the local cache") from None


def _tokenizer_if_any(name: str, trust_remote_code: bool):
    """The teacher's tokenizer where there is one to read (a folder's files, or a Hub id in reach), else None."""
    from transformers import AutoTokenizer

    if Path(name).is_dir() and not any((Path(name) / f).is_file() for f in TOKENIZER_FILES):
        return None
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None


def check_teacher(args) -> None:
    """Before any work (no accelerator, no data, no weights): the teacher exists, its vocabulary size equals the
    student model's, and where it has a tokenizer, that tokenizer maps every token to the id the run's tokenizer
    does. ValueError with one message otherwise."""
    if not args.teacher:
        return
    teacher = teacher_model_config(args.teacher, args.trust_remote_code)
    student = student_model_config(args)
    if teacher.vocab_size != student.vocab_size:
        raise ValueError(
            f"teacher {args.teacher} has vocab_size {teacher.vocab_size}, the student "
            f"({args.init_from or args.model_config}) {student.vocab_size}: distillation compares the two models' "
            "distributions token by token, so they need the same vocabulary (a Llama-2 model for TinyLlama)")
    teacher_tok = _tokenizer_if_any(args.teacher, args.trust_remote_code)
    if teacher_tok is None:
        log.warning("teacher %s: no tokenizer to compare with %s; only the vocabulary size (%d) was checked",
                    args.teacher, args.tokenizer, teacher.vocab_size)
        return
    from transformers import AutoTokenizer

    ours = AutoTokenizer.from_pretrained(args.tokenizer, trust_remote_code=args.trust_remote_code).get_vocab()
    theirs = teacher_tok.get_vocab()
    differ = differing_tokens(ours, theirs)
    if differ:
        shown = ", ".join(f"{t!r}: {ours.get(t)} vs {theirs.get(t)}" for t in differ[:5])
        raise ValueError(
            f"teacher {args.teacher}: its tokenizer gives {len(differ)} token(s) another id than the run's tokenizer "
            f"{args.tokenizer} (e.g. {shown}): the same ids must mean the same tokens for distillation")


def teacher_dtype(device) -> torch.dtype:
    """bf16 on a GPU, fp32 on CPU (CPU bf16 matmuls are slow and the CPU runs are the exactness tests)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def load_teacher(args, accelerator):
    """The teacher's weights, frozen, in eval mode (built partitioned under ZeRO-3's zero3_init_flag, like the
    student). ``prepare_teacher`` places or shards it once the student is prepared."""
    from ..model import build_model
    from .core import built_as_configured

    with built_as_configured(accelerator):
        teacher = build_model(init_from=args.teacher, attn_implementation=args.attn_implementation,
                              dtype=teacher_dtype(accelerator.device), trust_remote_code=args.trust_remote_code)
    teacher.config.use_cache = False
    teacher.requires_grad_(False)
    return teacher.eval()


def prepare_teacher(teacher, accelerator):
    """Place the teacher for the run's engine (module docstring); after ``accelerator.prepare`` of the student, whose
    DeepSpeed config is then complete (accelerate fills its ``auto`` values there)."""
    from accelerate.utils import DistributedType

    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None and int(plugin.zero_stage) == 3:
        import copy

        import deepspeed

        config = copy.deepcopy(plugin.deepspeed_config)
        # no optimizer, so none of the training-only blocks (DeepSpeed would build an optimizer or a scheduler)
        for key in ("optimizer", "scheduler"):
            config.pop(key, None)
        config["zero_optimization"].pop("offload_optimizer", None)
        engine, *_ = deepspeed.initialize(model=teacher, config=config)
        params = list(engine.module.parameters())
        log.info("teacher partitioned by DeepSpeed ZeRO-3 over %d processes: this rank holds %d of its %d "
                 "parameters", accelerator.num_processes, sum(p.ds_tensor.numel() for p in params),
                 sum(p.ds_numel for p in params))
        engine.eval()  # (DeepSpeedEngine.eval returns None)
        return engine
    if accelerator.distributed_type == DistributedType.FSDP and getattr(accelerator.state.fsdp_plugin,
                                                                        "fsdp_version", 1) == 2:
        log.info("teacher sharded by FSDP2 over %d processes", accelerator.num_processes)
        return shard_fsdp2(teacher, accelerator.device)
    if accelerator.num_processes > 1:
        log.info("teacher replicated on each of the %d processes (%s; not wrapped in DDP: it has no gradients)",
                 accelerator.num_processes, accelerator.distributed_type.value)
    return teacher.to(accelerator.device)


def shard_fsdp2(teacher, device):
    """FSDP2: each decoder layer, then the whole, sharded with ``fully_shard`` over every process (all-gathered for
    its forward, resharded after it). The weights are already the teacher's dtype, so no mixed-precision policy."""
    from torch.distributed.fsdp import fully_shard

    teacher.to(device)
    for layer in teacher.model.layers:
        fully_shard(layer, reshard_after_forward=True)
    fully_shard(teacher, reshard_after_forward=True)
    return teacher


def forward_flops_per_token(teacher_config, seq_len: int, n_params: int) -> float:
    """A forward pass's FLOPs per token: a third of the training convention's 6·N + 12·L·H·Q·T, i.e. 2·N + 4·L·H·Q·T
    (N without the input embedding)."""
    from ..model import flops_per_token

    return flops_per_token(teacher_config, seq_len, n_params) / 3


@dataclass
class Distiller:
    """What ``train_step`` needs to distil: the prepared teacher and the loss's three numbers."""

    teacher: object
    alpha: float
    temperature: float
    top_k: int | None

    def loss(self, model, batch: dict, document_masking: bool, device) -> tuple[torch.Tensor, torch.Tensor,
                                                                              torch.Tensor]:
        """(total, CE, KL) of one micro-batch; CE and KL detached (for the log). The teacher reads the very inputs the
        student reads (``model_inputs``: position ids, document boundaries), without labels."""
        from .core import model_inputs, uses_varlen_attention

        inputs = model_inputs(batch, document_masking, device, document_masking and uses_varlen_attention(model))
        out = model(**inputs)
        with torch.no_grad():
            teacher_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "shift_labels")}
            if document_masking and not uses_varlen_attention(self.teacher):
                teacher_inputs = {k: v for k, v in teacher_inputs.items() if not k.startswith(("cu_seq_lens",
                                                                                              "max_length"))}
            teacher_logits = self.teacher(**teacher_inputs).logits
        kl = kl_to_teacher(out.logits, teacher_logits, inputs["shift_labels"], self.temperature, self.top_k)
        return mix(out.loss, kl, self.alpha, self.temperature), out.loss.detach(), kl.detach()
