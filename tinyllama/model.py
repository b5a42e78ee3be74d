"""Build TinyLlama-shaped models for every recipe: one function, one place that resolves the attention kernel.

``configs/model/tinyllama-1.1b.json`` is the architecture (docs/reference.md, "Architecture");
the smaller JSONs beside it are the demo and test sizes. A model is built either fresh from such a config file
(pretraining from scratch) or from a model folder / Hub id (``init_from``: continual pretraining, fine-tuning).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import os
from pathlib import Path

import torch

from .utils import repo_root

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = repo_root() / "configs" / "model"
# "auto" picks flash_attention_2 where flash-attn is installed, else sdpa (logged). torch_varlen is torch's own
# FlashAttention varlen kernel (tinyllama/attention.py): packed documents at flash speed without the flash-attn package.
ATTENTION_CHOICES = ("auto", "flash_attention_2", "torch_varlen", "flex_attention", "sdpa", "eager")


def resolve_model_config_path(name: str | os.PathLike) -> Path | None:
    """``tinyllama-1.1b`` -> configs/model/tinyllama-1.1b.json; a path to a .json file is taken as it is."""
    p = Path(name)
    if p.suffix == ".json":
        return p
    candidate = MODEL_CONFIG_DIR / f"{name}.json"
    return candidate if candidate.exists() else None


def load_model_config(name: str | os.PathLike, trust_remote_code: bool = False):
    """A ``PretrainedConfig`` from a config JSON, a short name in configs/model, a model folder or a Hub id."""
    from transformers import AutoConfig, LlamaConfig

    path = resolve_model_config_path(name)
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(f"model config not found: {path}")
        return LlamaConfig.from_json_file(str(path))
    return AutoConfig.from_pretrained(str(name), trust_remote_code=trust_remote_code)


@functools.cache
def flash_attn_unavailable_reason() -> str | None:
    """Why flash_attention_2 cannot be used here, or None when it can."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    if importlib.util.find_spec("flash_attn") is None:
        return "the flash-attn package is not installed (pip install -r requirements-gpu.txt)"
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        return f"the GPU (compute capability {major}.x) is older than Ampere"
    return None


def attn_unavailable_reason(attn: str) -> str | None:
    """Why the attention kernel ``attn`` cannot run on this machine, or None when it can."""
    if attn == "flash_attention_2":
        return flash_attn_unavailable_reason()
    if attn == "torch_varlen":
        from .attention import varlen_unavailable_reason

        return varlen_unavailable_reason()
    if attn == "flex_attention" and importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
        return f"torch {torch.__version__} has no flex_attention"
    return None


@functools.cache
def resolve_attn_implementation(requested: str = "auto") -> str:
    """The kernel to build with: ``requested`` itself, which must be available here (else one error naming why and
    the alternatives: no silent fallback to a slower kernel); ``auto`` is flash_attention_2 where flash-attn runs,
    else sdpa, and says which in the log (once per process)."""
    if requested not in ATTENTION_CHOICES:
        raise ValueError(f"attn_implementation must be one of {ATTENTION_CHOICES}, got {requested!r}")
    if requested == "torch_varlen":
        from .attention import register

        register()  # (transformers must know the name before a model is built with it)
    if requested != "auto":
        if reason := attn_unavailable_reason(requested):
            raise ValueError(
                f"attn_implementation {requested} cannot run here: {reason}. Choose another kernel: sdpa (torch's "
                "own FlashAttention when document_masking is off), torch_varlen (packed documents on a CUDA GPU, "
                "torch >= 2.10), flex_attention, or auto (docs/testing.md, \"Attention kernels\")")
        return requested
    reason = flash_attn_unavailable_reason()
    choice = "flash_attention_2" if reason is None else "sdpa"
    log.info("attn_implementation auto: %s%s", choice, f" ({reason})" if reason else "")
    return choice


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"dtype must be one of {sorted(names)}, got {dtype!r}")
    return names[dtype]


def build_model(
    config: str | os.PathLike | None = None,
    *,
    init_from: str | os.PathLike | None = None,
    attn_implementation: str = "auto",
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    seed: int | None = None,
):
    """A ``LlamaForCausalLM`` (or any causal LM) for a recipe.

    - ``config`` alone: fresh weights from a model config (a JSON file, a name in configs/model, or a Hub id).
    - ``init_from``: weights of a model folder or Hub id (safetensors only); ``config``, when also given, must
      describe the same architecture (checked, so a checkpoint of another size fails with a clear message).
    """
    from transformers import AutoModelForCausalLM

    if config is None and init_from is None:
        raise ValueError("build_model needs a model config or init_from")
    attn = resolve_attn_implementation(attn_implementation)
    torch_dtype = parse_dtype(dtype)
    if init_from is not None:
        if config is not None:
            check_same_architecture(load_model_config(config), load_model_config(init_from, trust_remote_code),
                                    str(config), str(init_from))
        from safetensors import SafetensorError

        try:
            return AutoModelForCausalLM.from_pretrained(
                str(init_from), attn_implementation=attn, dtype=torch_dtype, use_safetensors=True,
                trust_remote_code=trust_remote_code,
            )
        except SafetensorError as e:  # a truncated or overwritten file: name it instead of a library traceback
            raise ValueError(f"{init_from}: a model.safetensors file there is damaged or not safetensors ({e}); "
                             "export the model again or point at another copy") from None
    model_config = load_model_config(config, trust_remote_code)
    if seed is not None:
        torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(
        model_config, attn_implementation=attn, dtype=torch_dtype, trust_remote_code=trust_remote_code
    )


INIT_CHOICES = ("tinyllama", "hf")
OUTPUT_PROJECTIONS = ("o_proj", "down_proj")  # lit_gpt's attention `proj` and MLP `proj`


def tinyllama_init_stds(config) -> tuple[float, float]:
    """(std of every embedding and linear weight, std of the attention and MLP output projections) of TinyLlama's
    initialisation: lit_gpt's ``_init_weights`` as its pretrain/tinyllama.py applies it (docs/reference.md,
    "Initialisation"): N(0, sqrt(2 / (5 d))) and N(0, 1 / sqrt(d) / L); 0.01398 and 0.001005 for the 1.1B model."""
    d, n_layers = config.hidden_size, config.num_hidden_layers
    return math.sqrt(2.0 / (5 * d)), 1.0 / math.sqrt(d) / n_layers


@torch.no_grad()
def init_weights(model, scheme: str = "tinyllama", seed: int | None = None) -> None:
    """Re-draw a freshly built model's weights with ``scheme``: ``tinyllama`` (above; RMSNorm weights 1, biases 0)
    or ``hf`` (transformers' own N(0, initializer_range) everywhere, already drawn by ``from_config``: nothing to do).

    Written here because transformers has no switch for it. The draws come from one CPU generator seeded with
    ``seed``, module by module in order, so the weights are a function of the seed alone: the same on CPU and GPU,
    in one process or built partitioned by DeepSpeed ZeRO-3's zero.Init (each module's weights are gathered, drawn
    on rank 0 and scattered back), whatever else consumed random numbers before."""
    if scheme not in INIT_CHOICES:
        raise ValueError(f"init must be one of {INIT_CHOICES}, got {scheme!r}")
    if scheme == "hf":
        return
    std, out_std = tinyllama_init_stds(model.config)
    generator = torch.Generator().manual_seed(0 if seed is None else seed)
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            with _gathered(module):
                w = module.weight
                w.copy_(torch.empty(w.shape).normal_(0.0, out_std if name.endswith(OUTPUT_PROJECTIONS) else std,
                                                     generator=generator))
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
        elif type(module).__name__.endswith("RMSNorm"):
            with _gathered(module):
                module.weight.fill_(1.0)


@torch.no_grad()
def load_weights(model, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state_dict, strict=True)``, also into a model built partitioned by DeepSpeed ZeRO-3's
    zero.Init (zero3_init_flag), module by module: whole weights are gathered one module at a time, so a model
    larger than one device's memory can be loaded."""
    if not any(hasattr(p, "ds_id") for p in model.parameters()):
        model.load_state_dict(state_dict, strict=True)
        return
    names = {n for n, _ in model.named_parameters()}
    missing, unexpected = sorted(names - set(state_dict)), sorted(set(state_dict) - names)
    if missing or unexpected:
        raise ValueError(f"{source}: the weights do not fit the model (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]})")
    for name, module in model.named_modules():
        params = dict(module.named_parameters(recurse=False))
        if params:
            with _gathered(module):
                for pname, p in params.items():
                    p.copy_(state_dict[f"{name}.{pname}" if name else pname])


def _gathered(module):
    """A context that gives rank 0 the whole weights of a ZeRO-3-partitioned module (a no-op otherwise)."""
    import contextlib

    params = [p for p in module.parameters(recurse=False) if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)


ARCHITECTURE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "vocab_size")


def check_same_architecture(expected, actual, expected_name: str, actual_name: str) -> None:
    diffs = [f"{k}: {getattr(expected, k, None)} vs {getattr(actual, k, None)}" for k in ARCHITECTURE_KEYS
             if getattr(expected, k, None) != getattr(actual, k, None)]
    if diffs:
        raise ValueError(f"{actual_name} does not match the model config {expected_name}: " + "; ".join(diffs))


def count_parameters(model_or_config, exclude_input_embedding: bool = False) -> int:
    """Parameters of a model, or of a config (built on the meta device: no memory, no time)."""
    model = model_or_config
    if not isinstance(model_or_config, torch.nn.Module):
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_or_config)
    def numel(p):  # (a weight partitioned by ZeRO-3's zero.Init holds none of its elements here: ds_numel counts them)
        return getattr(p, "ds_numel", None) or p.numel()

    total = sum(numel(p) for p in model.parameters())
    if exclude_input_embedding:
        total -= numel(model.get_input_embeddings().weight)
    return total


def flops_per_token(model_config, seq_len: int, n_params: int | None = None) -> float:
    """Training FLOPs per token: 6·N + 12·L·H·Q·T (PaLM's appendix B; TinyLlama's MFU convention).

    N counts every parameter except the input embedding (the lookup does no matmul); the second term is the
    attention score and value matmuls, forward and backward, with L layers, H heads, Q head size, T sequence
    length. For TinyLlama 1.1B at T=2048: 7.31 GFLOP per token.
    """
    if n_params is None:
        n_params = count_parameters(model_config, exclude_input_embedding=True)
    L = model_config.num_hidden_layers
    H = model_config.num_attention_heads
    Q = getattr(model_config, "head_dim", None) or model_config.hidden_size // H
    return 6 * n_params + 12 * L * H * Q * seq_len
