"""Checkpoints in other formats <-> the Hugging Face model folders this repository trains from, evaluates and serves.

In: TinyLlama's own lit_gpt ``.pth`` (what its pretraining saved), a current litgpt checkpoint folder
(``lit_model.pth`` + ``model_config.yaml``), a Meta-format Llama folder (``consolidated.*.pth`` + ``params.json``).
Out: a litgpt checkpoint folder from any export. ``scripts/convert_checkpoint.py`` is the command; the layouts are
described in docs/reference.md, "Checkpoint formats", with their sources.

Written here because no installed library does it: transformers' Meta converter is a script of its source tree, not
of the wheel; litgpt's converters need litgpt itself (which pins an older huggingface_hub than this repository),
write a ``model.pth`` that ``from_pretrained`` cannot load, and know only the model names of their registry; and
TinyLlama's own script needs its lit_gpt package. Only the key names and three tensor layouts are this module's
business; litgpt's own model and converters are the reference it is checked against (``make test-interop``,
tests/test_interop_litgpt.py), and the lit_gpt and Meta layouts are checked through transformers
(tests/test_convert_checkpoint.py).

Every source is read and checked whole (every key present, none left over, every shape what the architecture says)
before anything is written; a problem stops the conversion with one message naming the file and the tensor. The
output folder is written beside its final name and moved into place when complete (``atomic_dir``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DIRECTIONS = ("lit_gpt-to-hf", "litgpt-to-hf", "meta-to-hf", "hf-to-litgpt")
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json", "chat_template.jinja")
WRAPPER_PREFIXES = ("_forward_module.", "_orig_mod.", "module.")  # Fabric/FSDP, torch.compile, DDP


class ConversionError(ValueError):
    """A source that is not the format named, or whose tensors do not fit the architecture (nothing was written)."""


@dataclass(frozen=True)
class Arch:
    """The shape of a Llama-family model, whatever the format calls its fields."""

    n_layer: int
    hidden: int
    n_head: int
    n_kv_head: int
    head_dim: int
    intermediate: int
    vocab: int  # rows of the embedding and of the output head
    rope_theta: float
    norm_eps: float
    context: int

    def describe(self) -> str:
        return (f"{self.n_layer} layers, hidden {self.hidden}, {self.n_head} query heads and {self.n_kv_head} "
                f"key/value heads of {self.head_dim}, MLP {self.intermediate}, vocabulary {self.vocab}")

    def hf_shapes(self) -> dict[str, tuple[int, ...]]:
        d, hd, inter = self.hidden, self.head_dim, self.intermediate
        shapes = {"model.embed_tokens.weight": (self.vocab, d), "model.norm.weight": (d,),
                  "lm_head.weight": (self.vocab, d)}
        for i in range(self.n_layer):
            p = f"model.layers.{i}."
            shapes.update({
                p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                p + "self_attn.q_proj.weight": (self.n_head * hd, d),
                p + "self_attn.k_proj.weight": (self.n_kv_head * hd, d),
                p + "self_attn.v_proj.weight": (self.n_kv_head * hd, d),
                p + "self_attn.o_proj.weight": (d, self.n_head * hd),
                p + "mlp.gate_proj.weight": (inter, d), p + "mlp.up_proj.weight": (inter, d),
                p + "mlp.down_proj.weight": (d, inter)})
        return shapes

    def hf_config(self, dtype: torch.dtype | None = None, bos: int = 1, eos: int = 2):
        from transformers import LlamaConfig

        config = LlamaConfig(
            vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.intermediate,
            num_hidden_layers=self.n_layer, num_attention_heads=self.n_head, num_key_value_heads=self.n_kv_head,
            head_dim=self.head_dim, max_position_embeddings=self.context, rms_norm_eps=self.norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": float(self.rope_theta)}, hidden_act="silu",
            tie_word_embeddings=False, attention_bias=False, mlp_bias=False, bos_token_id=bos, eos_token_id=eos,
            architectures=["LlamaForCausalLM"])
        if dtype is not None:
            config.dtype = dtype
        return config

    @classmethod
    def from_hf_config(cls, config, source: str = "config") -> "Arch":
        """From a ``LlamaConfig``; refuses what the other formats cannot express (biases, tied or scaled RoPE...)."""
        problems = []
        if getattr(config, "model_type", None) != "llama":
            problems.append(f"model_type is {getattr(config, 'model_type', None)!r}, not 'llama'")
        for flag in ("attention_bias", "mlp_bias"):
            if getattr(config, flag, False):
                problems.append(f"{flag} is true (litgpt's LLaMAMLP and Meta's layout have no biases)")
        rope = getattr(config, "rope_parameters", None) or {"rope_type": "default",
                                                            "rope_theta": getattr(config, "rope_theta", 10000.0)}
        if rope.get("rope_type", "default") != "default":
            problems.append(f"RoPE scaling {rope.get('rope_type')!r} is not converted (only plain rotary)")
        if getattr(config, "hidden_act", "silu") != "silu":
            problems.append(f"hidden_act is {config.hidden_act!r}, not silu")
        if problems:
            raise ConversionError(f"{source}: cannot convert: " + "; ".join(problems))
        n_head = config.num_attention_heads
        return cls(n_layer=config.num_hidden_layers, hidden=config.hidden_size, n_head=n_head,
                   n_kv_head=config.num_key_value_heads or n_head,
                   head_dim=getattr(config, "head_dim", None) or config.hidden_size // n_head,
                   intermediate=config.intermediate_size, vocab=config.vocab_size,
                   rope_theta=float(rope.get("rope_theta", 10000.0)), norm_eps=config.rms_norm_eps,
                   context=config.max_position_embeddings)


# ---------------------------------------------------------------------------------------------------------------
# Key names (docs/reference.md, "Checkpoint formats"): per layer, the format's name -> transformers' name
# ---------------------------------------------------------------------------------------------------------------
LIT_GLOBAL = {"transformer.wte.weight": "model.embed_tokens.weight", "transformer.ln_f.weight": "model.norm.weight",
              "lm_head.weight": "lm_head.weight"}
LIT_LAYER = {"norm_1.weight": "input_layernorm.weight", "attn.proj.weight": "self_attn.o_proj.weight",
             "norm_2.weight": "post_attention_layernorm.weight"}
# the SwiGLU MLP: TinyLlama's lit_gpt used xformers' SwiGLU (w1 gate, w2 up, w3 down), litgpt names them fc_1/fc_2/proj
LIT_MLP = {"xformers": {"mlp.swiglu.w1.weight": "mlp.gate_proj.weight", "mlp.swiglu.w2.weight": "mlp.up_proj.weight",
                        "mlp.swiglu.w3.weight": "mlp.down_proj.weight"},
           "litgpt": {"mlp.fc_1.weight": "mlp.gate_proj.weight", "mlp.fc_2.weight": "mlp.up_proj.weight",
                      "mlp.proj.weight": "mlp.down_proj.weight"}}
# the fused query/key/value: "grouped" (lit_gpt and litgpt before 0.5: per key/value group, its query heads, then its
# key head, then its value head) or "concatenated" (current litgpt's attn.qkv: all queries, all keys, all values)
LIT_QKV = {"grouped": "attn.attn.weight", "concatenated": "attn.qkv.weight"}

META_GLOBAL = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
               "output.weight": "lm_head.weight"}
META_LAYER = {"attention_norm.weight": "input_layernorm.weight", "attention.wq.weight": "self_attn.q_proj.weight",
              "attention.wk.weight": "self_attn.k_proj.weight", "attention.wv.weight": "self_attn.v_proj.weight",
              "attention.wo.weight": "self_attn.o_proj.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
              "feed_forward.w1.weight": "mlp.gate_proj.weight", "feed_forward.w3.weight": "mlp.up_proj.weight",
              "feed_forward.w2.weight": "mlp.down_proj.weight"}
META_IGNORED = ("rope.freqs",)  # Llama-1/2 files keep their rotary frequencies; they follow from rope_theta
# how Meta's model-parallel shards split each tensor (fairscale: column-parallel on dim 0, row-parallel on dim 1)
META_SHARD_DIM = {"attention.wq.weight": 0, "attention.wk.weight": 0, "attention.wv.weight": 0,
                  "feed_forward.w1.weight": 0, "feed_forward.w3.weight": 0, "output.weight": 0,
                  "attention.wo.weight": 1, "feed_forward.w2.weight": 1}

# litgpt's Config fields (litgpt/config.py) and the only values a Llama of this shape may have
LITGPT_PLAIN_LLAMA = {"norm_class_name": "RMSNorm", "mlp_class_name": "LLaMAMLP", "parallel_residual": False,
                      "bias": False, "attn_bias": False, "lm_head_bias": False, "rotary_percentage": 1.0,
                      "rope_condense_ratio": 1, "rope_adjustments": None, "rope_interleave": False,
                      "shared_attention_norm": False, "norm_qk": False, "post_attention_norm": False,
                      "post_mlp_norm": False, "scale_embeddings": False, "n_expert": 0, "norm_1": True,
                      "norm_2": True, "sliding_window_size": None, "attention_logit_softcapping": None,
                      "final_logit_softcapping": None, "attention_scores_scalar": None, "latent_attention": None}


def family(keys) -> str | None:
    """Which format a state dict's keys look like (for the message when the wrong direction was asked for)."""
    keys = set(keys)
    if "tok_embeddings.weight" in keys or any(k.startswith("layers.") for k in keys):
        return "Meta (use meta-to-hf)"
    if any(k.endswith("attn.attn.weight") for k in keys):
        return "lit_gpt, fused query/key/value grouped per key/value head (use lit_gpt-to-hf)"
    if any(k.endswith("attn.qkv.weight") for k in keys):
        return "litgpt (use litgpt-to-hf)"
    if any(k.startswith("model.layers.") for k in keys):
        return "Hugging Face transformers (already this repository's format)"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------
def load_pth(path: Path) -> dict[str, torch.Tensor]:
    """A ``.pth`` state dict (memory-mapped; under a ``"model"`` key, as lit_gpt and litgpt save it, or at the top),
    without Fabric/DDP/compile prefixes. Tensors only: ``weights_only`` loading, never arbitrary pickled code."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # not a torch file, truncated, or pickled objects other than tensors
        raise ConversionError(f"{path}: cannot be read as a PyTorch state dict ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj:
        raise ConversionError(f"{path}: holds no state dict (a mapping of tensor names to tensors)")
    state = {}
    for key, value in obj.items():
        name = str(key)
        for prefix in WRAPPER_PREFIXES:
            name = name.removeprefix(prefix)
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        state[name] = value
    return state


def _layer_index(key: str, prefix: str) -> int | None:
    m = re.match(re.escape(prefix) + r"(\d+)\.", key)
    return int(m.group(1)) if m else None


def check_tensors(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], source: str, what: str,
                  arch: Arch) -> None:
    """Every expected tensor present with its shape, nothing else: else one message naming the tensors."""
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    wrong = [(k, tuple(state[k].shape), s) for k, s in expected.items() if k in state and tuple(state[k].shape) != s]
    if not (missing or extra or wrong):
        return
    guess = family(state)
    if missing and len(missing) == len(expected) and guess:
        raise ConversionError(f"{source} is not a {what} checkpoint: none of its tensors has a {what} name "
                              f"(e.g. no {next(iter(expected))}); its names look like {guess}")
    parts = []
    if wrong:
        k, got, want = wrong[0]
        parts.append(f"tensor {k} has shape {got}, expected {want}" + (f" (and {len(wrong) - 1} more shapes differ)"
                                                                       if len(wrong) > 1 else ""))
    if missing:
        parts.append(f"missing tensor {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if extra:
        parts.append(f"unexpected tensor {extra[0]}" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    raise ConversionError(f"{source}: " + "; ".join(parts) + f". Expected a {what} checkpoint of {arch.describe()}")


def lit_variant(state: dict[str, torch.Tensor], source: str) -> tuple[str, str]:
    """(qkv layout, MLP naming) of a lit_gpt/litgpt state dict, from its names."""
    qkv = [name for name, key in LIT_QKV.items() if any(k.endswith(key) for k in state)]
    mlp = [name for name, keys in LIT_MLP.items() if any(k.endswith(tuple(keys)) for k in state)]
    if len(qkv) != 1 or len(mlp) != 1:
        guess = family(state)
        raise ConversionError(f"{source}: not a lit_gpt/litgpt Llama checkpoint: expected exactly one of the "
                              f"attention names {sorted(LIT_QKV.values())} and one MLP naming "
                              f"({', '.join(sorted(k for m in LIT_MLP.values() for k in m))}); found "
                              f"{qkv or 'no'} attention and {mlp or 'no'} MLP names"
                              + (f"; the names look like {guess}" if guess else ""))
    return qkv[0], mlp[0]


def lit_shapes(arch: Arch, qkv: str, mlp: str) -> dict[str, tuple[int, ...]]:
    hf = arch.hf_shapes()
    shapes = {lit: hf[name] for lit, name in LIT_GLOBAL.items()}
    fused = ((arch.n_head + 2 * arch.n_kv_head) * arch.head_dim, arch.hidden)
    for i in range(arch.n_layer):
        p, q = f"transformer.h.{i}.", f"model.layers.{i}."
        shapes.update({p + lit: hf[q + name] for lit, name in {**LIT_LAYER, **LIT_MLP[mlp]}.items()})
        shapes[p + LIT_QKV[qkv]] = fused
    return shapes


def split_qkv(w: torch.Tensor, arch: Arch, layout: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    hd, kv, q_per_kv = arch.head_dim, arch.n_kv_head, arch.n_head // arch.n_kv_head
    if layout == "concatenated":
        return tuple(t.clone() for t in w.split((arch.n_head * hd, kv * hd, kv * hd)))
    # grouped: rows = [group 0: q_per_kv query heads, 1 key head, 1 value head][group 1: ...]...
    groups = w.reshape(kv, (q_per_kv + 2) * hd, arch.hidden)
    q, k, v = groups.split((q_per_kv * hd, hd, hd), dim=1)
    return (q.reshape(-1, arch.hidden).clone(), k.reshape(-1, arch.hidden).clone(),
            v.reshape(-1, arch.hidden).clone())


def lit_to_hf(state: dict[str, torch.Tensor], arch: Arch, source: str) -> dict[str, torch.Tensor]:
    """A lit_gpt or litgpt state dict (either attention layout, either MLP naming) -> transformers' Llama names."""
    if arch.n_head % arch.n_kv_head:
        raise ConversionError(f"{source}: {arch.n_head} query heads do not divide into {arch.n_kv_head} groups")
    qkv, mlp = lit_variant(state, source)
    check_tensors(state, lit_shapes(arch, qkv, mlp), source, "lit_gpt/litgpt", arch)
    out = {hf: state[lit] for lit, hf in LIT_GLOBAL.items()}
    for i in range(arch.n_layer):
        p, q = f"transformer.h.{i}.", f"model.layers.{i}."
        out.update({q + hf: state[p + lit] for lit, hf in {**LIT_LAYER, **LIT_MLP[mlp]}.items()})
        wq, wk, wv = split_qkv(state[p + LIT_QKV[qkv]], arch, qkv)
        out.update({q + "self_attn.q_proj.weight": wq, q + "self_attn.k_proj.weight": wk,
                    q + "self_attn.v_proj.weight": wv})
    return out


def hf_to_litgpt_state(hf: dict[str, torch.Tensor], arch: Arch) -> dict[str, torch.Tensor]:
    """transformers' Llama names -> current litgpt's (``attn.qkv`` = queries, keys, values concatenated)."""
    out = {lit: hf[name] for lit, name in LIT_GLOBAL.items()}
    for i in range(arch.n_layer):
        p, q = f"transformer.h.{i}.", f"model.layers.{i}."
        out.update({p + lit: hf[q + name] for lit, name in {**LIT_LAYER, **LIT_MLP["litgpt"]}.items()})
        out[p + LIT_QKV["concatenated"]] = torch.cat([hf[q + f"self_attn.{x}_proj.weight"] for x in "qkv"])
    return out


# ---- litgpt's model_config.yaml --------------------------------------------------------------------------------
def arch_from_litgpt_config(cfg: dict, source: str) -> Arch:
    """litgpt's ``Config`` fields -> Arch, with litgpt's own defaults (litgpt/config.py, ``__post_init__``)."""
    unsupported = [f"{k}={cfg[k]!r} (a plain Llama has {v!r})" for k, v in LITGPT_PLAIN_LLAMA.items()
                   if k in cfg and cfg[k] != v and not (v is None and cfg[k] in ({}, []))]
    absent = [k for k in ("n_layer", "n_embd", "n_head", "vocab_size", "intermediate_size", "mlp_class_name",
                          "norm_class_name", "parallel_residual", "bias", "rotary_percentage") if k not in cfg]
    if unsupported or absent:
        raise ConversionError(f"{source}: not a Llama-shaped litgpt config: "
                              + "; ".join(unsupported + [f"no {k} (litgpt's default is not a Llama's)"
                                                         for k in absent]))
    n_head = int(cfg["n_head"])
    padded = cfg.get("padded_vocab_size")
    if padded is None:  # litgpt rounds the vocabulary up to padding_multiple
        multiple = int(cfg.get("padding_multiple", 512))
        padded = -(-int(cfg["vocab_size"]) // multiple) * multiple
    return Arch(n_layer=int(cfg["n_layer"]), hidden=int(cfg["n_embd"]), n_head=n_head,
                n_kv_head=int(cfg.get("n_query_groups") or n_head),
                head_dim=int(cfg.get("head_size") or int(cfg["n_embd"]) // n_head),
                intermediate=int(cfg["intermediate_size"]), vocab=int(padded),
                rope_theta=float(cfg.get("rope_base", 10000)), norm_eps=float(cfg.get("norm_eps", 1e-5)),
                context=int(cfg.get("block_size", 4096)))


def litgpt_config(arch: Arch, name: str, vocab_size: int) -> dict:
    """The model_config.yaml litgpt's ``Config.from_file`` reads for this architecture (every field a Llama needs
    spelled out: litgpt's defaults are GPT-NeoX's)."""
    if float(arch.rope_theta) != int(arch.rope_theta):
        raise ConversionError(f"rope_theta {arch.rope_theta} is not an integer; litgpt's rope_base is an int")
    return {"name": name, "block_size": arch.context, "vocab_size": vocab_size, "padded_vocab_size": arch.vocab,
            "n_layer": arch.n_layer, "n_embd": arch.hidden, "n_head": arch.n_head, "head_size": arch.head_dim,
            "n_query_groups": arch.n_kv_head, "intermediate_size": arch.intermediate, "norm_eps": arch.norm_eps,
            "rope_base": int(arch.rope_theta),
            **{k: v for k, v in LITGPT_PLAIN_LLAMA.items() if v is not None}}


# ---- Meta ------------------------------------------------------------------------------------------------------
def meta_shards(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder (a Meta checkpoint is a folder with params.json and "
                                "consolidated.00.pth)")
    shards = sorted(folder.glob("consolidated.*.pth"))
    if not shards or not (folder / "params.json").is_file():
        raise ConversionError(f"{folder}: not a Meta checkpoint folder: it needs params.json and "
                              f"consolidated.00.pth (found {sorted(p.name for p in folder.iterdir())[:8]})")
    return shards


def merge_meta_shards(shards: list[dict[str, torch.Tensor]], dim: int, source: str) -> dict[str, torch.Tensor]:
    """One state dict from Meta's model-parallel shards (one shard: itself)."""
    if len(shards) == 1:
        return {k: v for k, v in shards[0].items() if k not in META_IGNORED}
    names = [k for k in shards[0] if k not in META_IGNORED]
    for i, shard in enumerate(shards[1:], 1):
        if set(shard) - set(META_IGNORED) != set(names):
            diff = sorted(set(shard).symmetric_difference(names) - set(META_IGNORED))
            raise ConversionError(f"{source}: shard {i} does not hold the tensors shard 0 holds (e.g. {diff[0]})")
    merged = {}
    for name in names:
        base = re.sub(r"^layers\.\d+\.", "", name)
        parts = [s[name] for s in shards]
        if base == "tok_embeddings.weight":  # Llama-2 splits the embedding width, Llama-3 the vocabulary
            merged[name] = torch.cat(parts, dim=1 if parts[0].shape[1] * len(parts) == dim else 0)
        elif base in META_SHARD_DIM:
            merged[name] = torch.cat(parts, dim=META_SHARD_DIM[base])
        else:  # norms: replicated on every shard
            merged[name] = parts[0]
    return merged


def arch_from_meta(params: dict, state: dict[str, torch.Tensor], source: str, context: int) -> Arch:
    unsupported = [k for k in ("use_scaled_rope", "moe", "vision_chunk_size") if params.get(k)]
    absent = [k for k in ("dim", "n_layers", "n_heads") if k not in params]
    if unsupported or absent:
        raise ConversionError(f"{source}/params.json: " + "; ".join(
            [f"{k} is set: not converted (only plain rotary, dense Llama)" for k in unsupported]
            + [f"no {k}" for k in absent]))
    for key in ("tok_embeddings.weight", "layers.0.feed_forward.w1.weight"):
        if key not in state:
            raise ConversionError(f"{source}: missing tensor {key}"
                                  + (f"; its names look like {family(state)}" if family(state) else ""))
    dim, n_head = int(params["dim"]), int(params["n_heads"])
    return Arch(n_layer=int(params["n_layers"]), hidden=dim, n_head=n_head,
                n_kv_head=int(params.get("n_kv_heads") or n_head), head_dim=dim // n_head,
                intermediate=int(state["layers.0.feed_forward.w1.weight"].shape[0]),
                vocab=int(state["tok_embeddings.weight"].shape[0]),
                rope_theta=float(params.get("rope_theta", 10000.0)), norm_eps=float(params.get("norm_eps", 1e-5)),
                context=context)


def meta_to_hf_rotary(w: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Meta's query/key rows -> transformers' order. Meta rotates adjacent pairs (rows 2i and 2i+1 of a head form
    one complex number at frequency i); transformers' Llama rotates row i with row i + head_dim/2. Per head, row 2i
    goes to i and row 2i+1 to i + head_dim/2."""
    d = w.shape[1]
    return w.reshape(n_heads, head_dim // 2, 2, d).transpose(1, 2).reshape(n_heads * head_dim, d).clone()


def meta_to_hf(state: dict[str, torch.Tensor], arch: Arch, source: str) -> dict[str, torch.Tensor]:
    hf_shapes = arch.hf_shapes()
    expected = {meta: hf_shapes[hf] for meta, hf in META_GLOBAL.items()}
    for i in range(arch.n_layer):
        expected.update({f"layers.{i}.{meta}": hf_shapes[f"model.layers.{i}.{hf}"] for meta, hf in META_LAYER.items()})
    check_tensors(state, expected, source, "Meta", arch)
    out = {hf: state[meta] for meta, hf in META_GLOBAL.items()}
    for i in range(arch.n_layer):
        for meta, hf in META_LAYER.items():
            w = state[f"layers.{i}.{meta}"]
            if meta == "attention.wq.weight":
                w = meta_to_hf_rotary(w, arch.n_head, arch.head_dim)
            elif meta == "attention.wk.weight":
                w = meta_to_hf_rotary(w, arch.n_kv_head, arch.head_dim)
            out[f"model.layers.{i}.{hf}"] = w
    return out


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer and output folder
# ---------------------------------------------------------------------------------------------------------------
def find_tokenizer(given: str | os.PathLike | None, *candidates: Path) -> Path | None:
    """The tokenizer to write with an import: ``--tokenizer`` (a folder or a ``tokenizer.model``), else the first
    candidate folder holding tokenizer.json or tokenizer.model."""
    if given is not None:
        path = Path(given)
        if not path.exists():
            raise FileNotFoundError(f"--tokenizer {path}: no such file or folder")
        if path.is_dir() and not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
            raise ConversionError(f"--tokenizer {path}: the folder has neither tokenizer.json nor tokenizer.model")
        return path
    for folder in candidates:
        if any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
            return folder
    return None


def load_tokenizer(path: Path):
    """A transformers tokenizer from a tokenizer folder, or from a SentencePiece file (SentencePiece-exact)."""
    from transformers import AutoTokenizer

    from .tokenizer import fast_tokenizer_from_sentencepiece

    if path.is_dir() and (path / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(path))
    model_file = path / "tokenizer.model" if path.is_dir() else path
    return fast_tokenizer_from_sentencepiece(model_file)


def save_tokenizer_files(tokenizer, source: Path, out: Path) -> None:
    """The tokenizer's files, with the ``tokenizer.model`` it came from (llama.cpp's converter and lit_gpt read it)."""
    from .tokenizer import SENTENCEPIECE_FILE, copy_sentencepiece_model

    tokenizer.save_pretrained(out)
    model_file = source if source.is_file() else source / SENTENCEPIECE_FILE
    if source.is_file() or not (source / "tokenizer.json").is_file():
        shutil.copyfile(model_file, out / SENTENCEPIECE_FILE)  # the tokenizer was built from it
    else:
        copy_sentencepiece_model(tokenizer, out)  # (copied only while it still matches the tokenizer)


def check_out(out: Path, source: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"--out {out} exists and is not empty: choose a new folder (nothing is overwritten)")
    if out.resolve() == source.resolve():
        raise ConversionError(f"--out {out} is the source itself")


def cast(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in state.items()}


def write_hf_folder(state: dict[str, torch.Tensor], arch: Arch, out: Path, tokenizer_path: Path | None,
                    dtype: torch.dtype | None, source: str) -> Path:
    """The imported model as a Hugging Face folder: config.json, model.safetensors, generation_config.json and the
    tokenizer; loaded back by transformers (every weight used, none missing) before it is moved into place."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, GenerationConfig

    from .utils import atomic_dir

    check_tensors(state, arch.hf_shapes(), source, "converted", arch)  # (the mappings' own consistency)
    tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path is not None else None
    if tokenizer is not None and len(tokenizer) > arch.vocab:
        raise ConversionError(f"the tokenizer {tokenizer_path} has {len(tokenizer)} tokens but the checkpoint's "
                              f"embedding has {arch.vocab} rows: not this model's tokenizer")
    state = cast(state, dtype)
    dtypes = {v.dtype for v in state.values()}
    bos = tokenizer.bos_token_id if tokenizer is not None and tokenizer.bos_token_id is not None else 1
    eos = tokenizer.eos_token_id if tokenizer is not None and tokenizer.eos_token_id is not None else 2
    config = arch.hf_config(dtype=dtypes.pop() if len(dtypes) == 1 else None, bos=bos, eos=eos)
    with atomic_dir(out) as tmp:
        config.save_pretrained(tmp)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        GenerationConfig(bos_token_id=bos, eos_token_id=eos).save_pretrained(tmp)
        if tokenizer is not None:
            save_tokenizer_files(tokenizer, tokenizer_path, tmp)
        model, info = AutoModelForCausalLM.from_pretrained(str(tmp), output_loading_info=True)
        problems = {k: v for k, v in info.items() if v}
        if problems:
            raise RuntimeError(f"transformers does not load the converted folder cleanly: {problems}")
        del model
    return out


# ---------------------------------------------------------------------------------------------------------------
# The four directions
# ---------------------------------------------------------------------------------------------------------------
def lit_gpt_to_hf(pth: str | os.PathLike, out: str | os.PathLike, model_config: str | os.PathLike = "tinyllama-1.1b",
                  tokenizer: str | os.PathLike | None = None, dtype: torch.dtype | None = None) -> Path:
    """TinyLlama's lit_gpt ``.pth`` -> Hugging Face folder. The file has no configuration: ``model_config`` (a JSON of
    configs/model or its name) gives the architecture, and every tensor's shape is checked against it."""
    from .model import load_model_config

    pth, out = Path(pth), Path(out)
    check_out(out, pth)
    config = load_model_config(model_config)
    arch = Arch.from_hf_config(config, str(model_config))
    tok = find_tokenizer(tokenizer, pth.parent)
    if tok is None:
        raise ConversionError(f"{pth}: a lit_gpt checkpoint carries no tokenizer; give --tokenizer (a tokenizer "
                              "folder or the tokenizer.model it was trained with: Llama-2's for TinyLlama)")
    state = lit_to_hf(load_pth(pth), arch, str(pth))
    return write_hf_folder(state, arch, out, tok, dtype, str(pth))


def litgpt_to_hf(folder: str | os.PathLike, out: str | os.PathLike, tokenizer: str | os.PathLike | None = None,
                 dtype: torch.dtype | None = None) -> Path:
    """A litgpt checkpoint folder (``lit_model.pth`` + ``model_config.yaml``) -> Hugging Face folder."""
    import yaml

    folder, out = Path(folder), Path(out)
    check_out(out, folder)
    cfg_path = folder / "model_config.yaml"
    if not cfg_path.is_file():
        raise ConversionError(f"{folder}: no model_config.yaml (a litgpt checkpoint folder has it beside "
                              "lit_model.pth)" + ("; for TinyLlama's own .pth use lit_gpt-to-hf"
                                                  if folder.is_file() else ""))
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    arch = arch_from_litgpt_config(cfg, str(cfg_path))
    tok = find_tokenizer(tokenizer, folder)
    if tok is None:
        log.warning("%s has no tokenizer and none was given: the folder is written without one", folder)
    pth = folder / "lit_model.pth"
    state = lit_to_hf(load_pth(pth), arch, str(pth))
    return write_hf_folder(state, arch, out, tok, dtype, str(pth))


def meta_to_hf_folder(folder: str | os.PathLike, out: str | os.PathLike, tokenizer: str | os.PathLike | None = None,
                      dtype: torch.dtype | None = None, context: int = 2048) -> Path:
    """A Meta-format folder (``params.json``, ``consolidated.*.pth``; ``tokenizer.model`` there or one level up,
    as Meta's downloads lay it out) -> Hugging Face folder. ``context``: max_position_embeddings (params.json has
    none)."""
    folder, out = Path(folder), Path(out)
    check_out(out, folder)
    shards = meta_shards(folder)
    params = json.loads((folder / "params.json").read_text(encoding="utf-8"))
    tok = find_tokenizer(tokenizer, folder, folder.parent)
    if tok is None:
        log.warning("no tokenizer.model in %s or its parent and none was given: the folder is written without one",
                    folder)
    if "dim" not in params:
        raise ConversionError(f"{folder}/params.json: no dim")
    state = merge_meta_shards([load_pth(p) for p in shards], int(params["dim"]), str(folder))
    arch = arch_from_meta(params, state, str(folder), context)
    hf = meta_to_hf(state, arch, str(folder))
    return write_hf_folder(hf, arch, out, tok, dtype, str(folder))


def load_hf_folder(folder: Path) -> tuple[dict[str, torch.Tensor], object]:
    """(state dict, config) of a Hugging Face model folder with safetensors weights (one file or an index)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    if not (folder / "config.json").is_file():
        raise ConversionError(f"{folder}: no config.json (give a model folder: an export of this repository)")
    if (folder / "adapter_config.json").is_file():
        raise ConversionError(f"{folder}: a LoRA adapter: merge it first (scripts/merge_lora.py)")
    index = folder / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file()
             else ["model.safetensors"])
    if not all((folder / f).is_file() for f in files):
        raise ConversionError(f"{folder}: no safetensors weights ({', '.join(files)})")
    state = {}
    for f in files:
        state.update(load_file(str(folder / f)))
    return state, AutoConfig.from_pretrained(str(folder))


def hf_to_litgpt(folder: str | os.PathLike, out: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """A Hugging Face Llama folder (an export) -> a litgpt checkpoint folder: ``lit_model.pth`` (current litgpt
    names and layout), ``model_config.yaml`` (the architecture, every field spelled out) and the tokenizer files."""
    import yaml

    from .utils import atomic_dir

    folder, out = Path(folder), Path(out)
    check_out(out, folder)
    state, config = load_hf_folder(folder)
    arch = Arch.from_hf_config(config, str(folder / "config.json"))
    if getattr(config, "tie_word_embeddings", False) and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]  # litgpt's Llama keeps its own output head
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    check_tensors(state, arch.hf_shapes(), str(folder), "Hugging Face Llama", arch)
    vocab_size = arch.vocab
    if (folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file():
        vocab_size = min(arch.vocab, len(load_tokenizer(folder)))
    lit_cfg = litgpt_config(arch, folder.resolve().name, vocab_size)
    lit = cast(hf_to_litgpt_state(state, arch), dtype)
    with atomic_dir(out) as tmp:
        torch.save(lit, tmp / "lit_model.pth")
        (tmp / "model_config.yaml").write_text(yaml.safe_dump(lit_cfg, sort_keys=True), encoding="utf-8")
        for name in TOKENIZER_FILES:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, tmp / name)
    return out


def convert(direction: str, source: str | os.PathLike, out: str | os.PathLike, *, model_config: str | None = None,
            tokenizer: str | None = None, dtype: torch.dtype | None = None, context: int | None = None) -> Path:
    """One entry for the four directions (scripts/convert_checkpoint.py)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if model_config is not None and direction != "lit_gpt-to-hf":
        raise ValueError("--config is for lit_gpt-to-hf only (the other formats carry their architecture)")
    if context is not None and direction != "meta-to-hf":
        raise ValueError("--context is for meta-to-hf only (the other formats carry their context length)")
    if tokenizer is not None and direction == "hf-to-litgpt":
        raise ValueError("--tokenizer is for the imports (hf-to-litgpt copies the folder's own tokenizer)")
    if direction == "lit_gpt-to-hf":
        return lit_gpt_to_hf(source, out, model_config or "tinyllama-1.1b", tokenizer, dtype)
    if direction == "litgpt-to-hf":
        return litgpt_to_hf(source, out, tokenizer, dtype)
    if direction == "meta-to-hf":
        return meta_to_hf_folder(source, out, tokenizer, dtype, context or 2048)
    return hf_to_litgpt(source, out, dtype)
