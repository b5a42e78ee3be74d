"""Shared pieces of the GPU tier: a packed micro-batch laid out as the data loader lays it out, and model twins."""

from __future__ import annotations

import copy
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch

ON_CPU = os.environ.get("TINYLLAMA_GPU_TIER_ON_CPU") == "1"


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
    resolver) silently chose another attention kernel than the one asked for."""
    from tinyllama.model import build_model

    model = build_model(config, attn_implementation=attn, seed=seed).to(tier.device).eval()
    assert model.config._attn_implementation == attn, (attn, model.config._attn_implementation)
    return model


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
