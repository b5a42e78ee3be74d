"""``torch_varlen``: varlen (packed-document) attention through torch's own FlashAttention kernel, no flash-attn.

The flash-attn package has no wheel for most torch/CUDA pairs and takes an hour or more to build, but every CUDA
build of torch ships FlashAttention-2 kernels (sdpa uses them) and, since torch 2.10, exposes their variable-length
form as ``torch.nn.attention.varlen.varlen_attn``. transformers has no attention implementation over it, so this
module registers one with transformers' ``AttentionInterface`` (its extension point for attention kernels) under the
name ``torch_varlen``; ``tinyllama.model`` offers it as an ``attn_implementation``. Written here because neither
torch nor transformers wires the two together.

What the kernel is handed: the samples of a micro-batch laid end to end (B*T tokens) and ``cu_seq_lens_q`` (int32
offsets of every sequence start, and B*T at the end) with ``max_length_q``; ``tinyllama.training.core.model_inputs``
computes them on the host from the loader's position ids (the documents with document masking). Without them
(generation, evaluation, a run without document masking) each row is one sequence. A padded batch (a 2-D attention
mask with zeros) is refused: the kernel has no padding mask, and dropping it would attend to padding silently.

``varlen_attn``'s keyword arguments changed between torch releases (2.10: ``is_causal``; later: ``window_size``,
``scale``, ``enable_gqa``): ``varlen_call_arguments`` adapts to the installed signature.
"""

from __future__ import annotations

import functools
import inspect
import math

import torch

NAME = "torch_varlen"


@functools.cache
def varlen_unavailable_reason() -> str | None:
    """Why ``torch_varlen`` cannot run here, or None when it can."""
    if not torch.cuda.is_available():
        return "no CUDA device (torch's FlashAttention kernels are CUDA only)"
    try:
        from torch.nn.attention import varlen  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen (torch >= 2.10 has)"
    if not torch.backends.cuda.is_flash_attention_available():
        return f"this torch build ({torch.__version__}) has no FlashAttention kernels"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return f"the GPU (compute capability {major}.{minor}) is older than Ampere"
    return None


@functools.cache
def _varlen_parameters(function) -> frozenset:
    return frozenset(inspect.signature(function).parameters)


def varlen_call_arguments(function, scaling: float | None, head_dim: int, gqa: bool) -> tuple[dict, bool]:
    """(keyword arguments for a causal call of ``function``, whether key/value heads must be repeated first).

    torch 2.10's ``varlen_attn`` takes ``is_causal`` and always scales by 1/sqrt(head_dim); later releases take a
    ``window_size`` ((-1, 0) is causal) and a ``scale``, and from 2.12 refuse fewer key/value heads than query heads
    unless ``enable_gqa=True``. Where ``enable_gqa`` does not exist the key/value heads are repeated (exact; more
    memory)."""
    params = _varlen_parameters(function)
    kwargs = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    if "scale" in params:
        kwargs["scale"] = scaling
    elif scaling is not None and not math.isclose(scaling, head_dim ** -0.5, rel_tol=1e-6):
        raise ValueError(f"torch_varlen: this torch's varlen_attn has no 'scale' argument and the model scales "
                         f"attention by {scaling}, not 1/sqrt({head_dim})")
    repeat = False
    if gqa:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            repeat = True
    return kwargs, repeat


def torch_varlen_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                           scaling: float | None = None, cu_seq_lens_q=None, max_length_q=None, **kwargs):
    """transformers' attention-function contract: query [B, Hq, T, D], key/value [B, Hkv, T, D] in; the output
    [B, T, Hq, D] and no attention weights out. Causal within each sequence of ``cu_seq_lens_q``."""
    from torch.nn.attention import varlen
    from transformers.integrations.flash_attention import get_target_dtype
    from transformers.integrations.sdpa_attention import repeat_kv

    if attention_mask is not None:
        raise ValueError("torch_varlen: a padded batch (attention mask with zeros) is not supported; use sdpa for "
                         "padded inputs (generation, chat fine-tuning)")
    if dropout:
        raise ValueError("torch_varlen: attention dropout is not supported")
    batch, heads, length, head_dim = query.shape
    if cu_seq_lens_q is None:  # one sequence per row
        cu_seq_lens_q = torch.arange(0, (batch + 1) * length, length, dtype=torch.int32, device=query.device)
        max_length_q = length
    call, repeat = varlen_call_arguments(varlen.varlen_attn, scaling, head_dim, gqa=key.shape[1] != heads)
    if repeat:
        key, value = repeat_kv(key, heads // key.shape[1]), repeat_kv(value, heads // value.shape[1])
    target = get_target_dtype(query, module)  # (fp32 activations under autocast: the kernel takes bf16/fp16 only)
    q, k, v = ((x if target is None else x.to(target)).transpose(1, 2).reshape(batch * length, x.shape[1], head_dim)
               for x in (query, key, value))
    out = varlen.varlen_attn(q, k, v, cu_seq_lens_q, cu_seq_lens_q, max_length_q, max_length_q, **call)
    return out.view(batch, length, heads, head_dim), None


def register() -> None:
    """Make ``attn_implementation="torch_varlen"`` known to transformers (idempotent). The mask function is
    flash attention's: no mask for an unpadded batch, the 2-D padding mask otherwise (which the kernel refuses)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import flash_attention_mask

    AttentionInterface.register(NAME, torch_varlen_attention)
    AttentionMaskInterface.register(NAME, flash_attention_mask)
