"""Shared pieces of the GPU tier: what a run requires, a packed micro-batch laid out as the data loader lays it out,
model twins, and a CPU reference of torch's varlen attention kernel."""

from __future__ import annotations

import copy
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch

ON_CPU = os.environ.get("TINYLLAMA_GPU_TIER_ON_CPU") == "1"
# What this run may lack, said by the run itself (scripts/gpu/tier.sh sets it): comma-separated names of kernels and
# packages (flash_attention_2, torch_varlen, flex_attention, liger, bitsandbytes, deepspeed). A check whose
# requirement is missing FAILS unless its name is here: a green tier must mean the configured kernels ran.
ALLOWED_MISSING = {n.strip() for n in os.environ.get("TINYLLAMA_GPU_ALLOW_MISSING", "").split(",") if n.strip()}


# The kernel the training checks (the 1.1B step, compile with document masking) run with on a GPU: the run's choice
# (scripts/gpu/tier.sh: torch_varlen, which any CUDA torch >= 2.10 has; flash_attention_2 where flash-attn is brought).
TRAIN_ATTENTION = os.environ.get("TINYLLAMA_GPU_ATTENTION", "flash_attention_2")


def require(name: str, reason: str | None) -> None:
    """Fail (or, where the run allows ``name`` to be missing, skip) when ``reason`` says it cannot run here."""
    import pytest

    if reason is None:
        return
    if name in ALLOWED_MISSING:
        pytest.skip(f"{name}: {reason} (allowed: TINYLLAMA_GPU_ALLOW_MISSING)")
    pytest.fail(f"{name} cannot run here: {reason}. Bring it (scripts/gpu/wheels.py), or say the run may go "
                f"without it: TINYLLAMA_GPU_ALLOW_MISSING={name}", pytrace=False)


@dataclass(frozen=True)
class Tier:
    """Where and at what precision the tier runs. On a GPU: the recipe's bf16 autocast over fp32 weights, checked
    against an fp32 reference. On CPU (TINYLLAMA_GPU_TIER_ON_CPU=1): fp32, checked against float64."""

    device: str
    small_model: str  # the model config of the kernel checks
    low: torch.dtype  # the precision under test
    ref: torch.dtype  # the precision of the reference
    ulp: float  # one unit in the last place of `low` around 1.0: the rounding floor of a comparison

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def autocast(self):
        """The recipe's mixed precision (accelerate's bf16 is torch.autocast over fp32 weights); none in fp32."""
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.low == torch.bfloat16 else nullcontext()


CPU_TIER = Tier("cpu", "tiny", torch.float32, torch.float64, 2.0**-23)
CUDA_TIER = Tier("cuda", "demo", torch.bfloat16, torch.float32, 2.0**-8)


def current_tier() -> Tier:
    return CUDA_TIER if torch.cuda.is_available() and not ON_CPU else CPU_TIER


# Document boundaries of each sample of the packed micro-batch (start offsets within the seq_len + 1 tokens), as
# fractions of the sample: documents of several lengths, one of a single token, one sample that is one document.
DOC_STARTS = [(0.0, 0.27, 0.7), (0.0, 0.39), (0.0, 0.04, 0.045, 0.55), (0.0,)]


def packed_batch(batch_size: int, seq_len: int, vocab: int = 4096, seed: int = 0) -> dict:
    """``{"input_ids", "position_ids"}`` of ``batch_size`` samples of ``seq_len + 1`` tokens: documents packed
    back to back, BOS (id 1) first in each, position ids restarting at 0 at every document and at every sample
    start (tinyllama.data.mixture's layout)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch_size, seq_len + 1), generator=gen)
    pos = torch.empty_like(ids)
    for row in range(batch_size):
        starts = sorted({int(f * (seq_len + 1)) for f in DOC_STARTS[row % len(DOC_STARTS)]}) + [seq_len + 1]
        for a, b in zip(starts[:-1], starts[1:]):
            pos[row, a:b] = torch.arange(b - a)
            ids[row, a] = 1
    return {"input_ids": ids, "position_ids": pos}


def documents(batch: dict) -> list[tuple[int, int, int]]:
    """(row, start, end) of every document of the model inputs (tokens 0..T-1 of each sample)."""
    pos = batch["position_ids"][:, :-1]
    out = []
    for row in range(pos.shape[0]):
        starts = (pos[row] == 0).nonzero().flatten().tolist() + [pos.shape[1]]
        out += [(row, a, b) for a, b in zip(starts[:-1], starts[1:])]
    return out


def build(config: str, attn: str, tier: Tier, seed: int = 0):
    """A fresh model with the recipe's builder, on the tier's device, in eval mode; fails if transformers (or our
    resolver) silently chose another attention kernel than the one asked for. On CPU, torch_varlen (CUDA only) is
    set on an sdpa build: its calls then need ``reference_varlen_attn`` in place of torch's kernel."""
    from tinyllama.model import build_model

    if attn == "torch_varlen" and not tier.cuda:
        from tinyllama.attention import register

        register()
        model = build_model(config, attn_implementation="sdpa", seed=seed)
        model.set_attn_implementation(attn)
    else:
        model = build_model(config, attn_implementation=attn, seed=seed)
    model = model.to(tier.device).eval()
    assert model.config._attn_implementation == attn, (attn, model.config._attn_implementation)
    return model


def reference_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                          window_size=(-1, -1), enable_gqa=False):
    """``torch.nn.attention.varlen.varlen_attn``'s contract (torch >= 2.12 signature) in plain tensor ops, for CPU:
    query [T, Hq, D], key/value [T, Hkv, D], every sequence of ``cu_seq_q`` attends within itself, causally when
    ``window_size`` is (-1, 0). No ``.item()``, so torch.compile traces through it."""
    assert cu_seq_k is cu_seq_q and cu_seq_q.dtype == torch.int32 and return_aux is None  # (self-attention)
    assert window_size in ((-1, 0), (-1, -1)) and (enable_gqa or key.shape[1] == query.shape[1])
    index = torch.arange(query.shape[0], device=query.device)
    sequence = torch.searchsorted(cu_seq_q, index.to(torch.int32), right=True)
    mask = sequence[:, None] == sequence[None, :]
    if window_size == (-1, 0):
        mask = mask & (index[None, :] <= index[:, None])
    out = torch.nn.functional.scaled_dot_product_attention(
        query.transpose(0, 1)[None], key.transpose(0, 1)[None], value.transpose(0, 1)[None], attn_mask=mask,
        scale=scale, enable_gqa=enable_gqa)
    return out[0].transpose(0, 1)


def reference_varlen_attn_torch_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False,
                                     return_aux=None):
    """The same with torch 2.10's signature: ``is_causal``, no ``scale`` (1/sqrt(D)), no grouped-query heads."""
    assert key.shape[1] == query.shape[1], "torch 2.10's varlen_attn takes as many key/value heads as query heads"
    return reference_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k,
                                 window_size=(-1, 0) if is_causal else (-1, -1))


def reference_twin(model, tier: Tier):
    """The same weights, eager attention (the plain softmax(QK^T)V), in the reference precision: the truth the
    kernels are measured against."""
    ref = copy.deepcopy(model).to(tier.ref)
    ref.set_attn_implementation("eager")
    assert ref.config._attn_implementation == "eager"
    return ref


class Capture:
    """Records what the model's forward received and returned (a forward pre-hook and a forward hook), so a test
    checks the exact tensors handed to the model by the recipe's ``forward_loss``."""

    def __init__(self, model):
        self.kwargs, self.output = None, None
        self.handles = [
            model.register_forward_pre_hook(self._pre, with_kwargs=True),
            model.register_forward_hook(self._post, with_kwargs=True),
        ]

    def _pre(self, module, args, kwargs):
        self.kwargs = {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in kwargs.items()}

    def _post(self, module, args, kwargs, output):
        self.output = output

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
