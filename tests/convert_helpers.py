"""Test helpers for checkpoint conversion: a small model of TinyLlama's attention shape, and writers of the lit_gpt and
Meta layouts built from their published descriptions (docs/reference.md, "Checkpoint formats"), independently of
tinyllama/convert.py (no code shared with it: a mistake there is not repeated here).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch

# TinyLlama's grouped-query attention (32 query heads sharing 4 key/value heads) at toy width (heads of 8), with a
# non-default RoPE base (100: positions rotate fast, so a misplaced rotary row changes the logits at once)
GQA_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 4096, "hidden_size": 256,
    "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 32, "num_key_value_heads": 4,
    "head_dim": 8, "hidden_act": "silu", "max_position_embeddings": 256,
    "rope_parameters": {"rope_type": "default", "rope_theta": 100.0}, "rms_norm_eps": 1e-05,
    "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2,
}


def sharpen_(named_parameters) -> None:
    """Weights that make every layout mistake visible: unit-scale activations (N(0, 1/fan_in)), query and key 3x
    larger (sharp attention: which key a query meets matters), norm weights in [0.5, 1.5] (a swapped norm shows)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in named_parameters:
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
                if any(s in name for s in ("q_proj", "k_proj")):
                    p.mul_(3.0)
            else:
                p.copy_(0.5 + torch.rand(p.shape, generator=g))


def gqa_model(config: dict | None = None):
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**(config or GQA_CONFIG))).eval()
    sharpen_(model.named_parameters())
    return model


def save_gqa_folder(out: Path, tokenizer_dir: Path, config: dict | None = None):
    """The model saved as an export of this repository would be (safetensors, config, the demo tokenizer)."""
    model = gqa_model(config)
    model.save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        if f.is_file():
            shutil.copy(f, out / f.name)
    return model


def token_ids(n: int = 48, vocab: int = 4096, batch: int = 2) -> torch.Tensor:
    return torch.randint(3, vocab, (batch, n), generator=torch.Generator().manual_seed(1))


def logits_of(model_or_dir, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = model_or_dir
    if not isinstance(model_or_dir, torch.nn.Module):
        model = AutoModelForCausalLM.from_pretrained(str(model_or_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def hf_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---- lit_gpt (TinyLlama's code): names and the grouped fused query/key/value -----------------------------------------
def lit_gpt_state(hf: dict[str, torch.Tensor], c: dict, mlp_names=("swiglu.w1", "swiglu.w2", "swiglu.w3"),
                  grouped: bool = True) -> dict[str, torch.Tensor]:
    """TinyLlama's lit_gpt state dict: ``attn.attn`` rows, for each key/value group g, are that group's query heads
    (8 of them in TinyLlama), then key head g, then value head g; xformers' SwiGLU names w1 (gate), w2 (up),
    w3 (down). ``grouped=False`` stacks all queries, all keys, all values instead (a deliberately wrong file)."""
    hd, n_kv = c["head_dim"], c["num_key_value_heads"]
    per = c["num_attention_heads"] // n_kv
    out = {"transformer.wte.weight": hf["model.embed_tokens.weight"], "transformer.ln_f.weight": hf["model.norm.weight"],
           "lm_head.weight": hf["lm_head.weight"]}
    for i in range(c["num_hidden_layers"]):
        src, dst = f"model.layers.{i}.", f"transformer.h.{i}."
        q, k, v = (hf[src + f"self_attn.{x}_proj.weight"] for x in "qkv")
        if grouped:
            rows = []
            for g in range(n_kv):
                rows += [q[g * per * hd:(g + 1) * per * hd], k[g * hd:(g + 1) * hd], v[g * hd:(g + 1) * hd]]
            fused = torch.cat(rows)
        else:
            fused = torch.cat([q, k, v])
        out[dst + "attn.attn.weight"] = fused
        out[dst + "attn.proj.weight"] = hf[src + "self_attn.o_proj.weight"]
        out[dst + "norm_1.weight"] = hf[src + "input_layernorm.weight"]
        out[dst + "norm_2.weight"] = hf[src + "post_attention_layernorm.weight"]
        for lit, name in zip(mlp_names, ("gate_proj", "up_proj", "down_proj")):
            out[dst + f"mlp.{lit}.weight"] = hf[src + f"mlp.{name}.weight"]
    return out


def save_lit_gpt_checkpoint(path: Path, hf: dict[str, torch.Tensor], c: dict, **kwargs) -> Path:
    """As TinyLlama's pretraining saves it (Fabric: the model's state under "model", beside the loop's state)."""
    state = {"model": lit_gpt_state(hf, c, **kwargs), "iter_num": 480, "step_count": 60,
             "hparams": {"learning_rate": 4e-4, "model_name": "tiny_LLaMA_1b"}}
    torch.save(state, path)
    return path


# ---- Meta: consolidated.*.pth + params.json, rotary over adjacent pairs -----------------------------------------------
def meta_rows(w: torch.Tensor, n_heads: int, hd: int) -> torch.Tensor:
    """transformers' query/key rows in Meta's order: Meta's row 2i + c of a head is transformers' row i + c * hd/2
    (Meta rotates the pair (2i, 2i+1), transformers the pair (i, i + hd/2))."""
    index = [h * hd + i + c * (hd // 2) for h in range(n_heads) for i in range(hd // 2) for c in (0, 1)]
    return w[index]


def meta_state(hf: dict[str, torch.Tensor], c: dict, permute: bool = True) -> dict[str, torch.Tensor]:
    hd = c["head_dim"]
    out = {"tok_embeddings.weight": hf["model.embed_tokens.weight"], "norm.weight": hf["model.norm.weight"],
           "output.weight": hf["lm_head.weight"], "rope.freqs": torch.zeros(hd // 2)}
    for i in range(c["num_hidden_layers"]):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        q, k = hf[src + "self_attn.q_proj.weight"], hf[src + "self_attn.k_proj.weight"]
        out[dst + "attention.wq.weight"] = meta_rows(q, c["num_attention_heads"], hd) if permute else q
        out[dst + "attention.wk.weight"] = meta_rows(k, c["num_key_value_heads"], hd) if permute else k
        out[dst + "attention.wv.weight"] = hf[src + "self_attn.v_proj.weight"]
        out[dst + "attention.wo.weight"] = hf[src + "self_attn.o_proj.weight"]
        out[dst + "attention_norm.weight"] = hf[src + "input_layernorm.weight"]
        out[dst + "ffn_norm.weight"] = hf[src + "post_attention_layernorm.weight"]
        # Meta's FeedForward: w2(silu(w1(x)) * w3(x))
        out[dst + "feed_forward.w1.weight"] = hf[src + "mlp.gate_proj.weight"]
        out[dst + "feed_forward.w3.weight"] = hf[src + "mlp.up_proj.weight"]
        out[dst + "feed_forward.w2.weight"] = hf[src + "mlp.down_proj.weight"]
    return out


# how fairscale's model parallelism splits each Meta tensor over shards (column-parallel: rows; row-parallel:
# columns; Llama-2's ParallelEmbedding: the embedding width); norms are copied to every shard
META_SPLIT = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1, "tok_embeddings": 1}


def save_meta_folder(folder: Path, hf: dict[str, torch.Tensor], c: dict, shards: int = 1, **kwargs) -> Path:
    folder.mkdir(parents=True)
    state = meta_state(hf, c, **kwargs)
    for s in range(shards):
        part = {}
        for name, w in state.items():
            kind = name.split(".")[-2] if name.endswith(".weight") else None
            dim = META_SPLIT.get(kind)
            part[name] = w.chunk(shards, dim=dim)[s].clone() if dim is not None else w.clone()
        torch.save(part, folder / f"consolidated.{s:02d}.pth")
    params = {"dim": c["hidden_size"], "n_layers": c["num_hidden_layers"], "n_heads": c["num_attention_heads"],
              "n_kv_heads": c["num_key_value_heads"], "multiple_of": 32, "norm_eps": c["rms_norm_eps"],
              "rope_theta": c["rope_parameters"]["rope_theta"], "vocab_size": -1}
    (folder / "params.json").write_text(json.dumps(params))
    return folder


def meta_rotary(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Meta's rotary embedding (llama/model.py, ``apply_rotary_emb``): each adjacent pair (2i, 2i+1) of a head is one
    complex number, turned by position * theta^(-2i/hd). x: (T, heads, hd)."""
    t, _, hd = x.shape
    freqs = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    angles = torch.outer(torch.arange(t, dtype=torch.float64), freqs)
    rot = torch.polar(torch.ones_like(angles), angles)[:, None, :]
    z = torch.view_as_complex(x.double().reshape(t, x.shape[1], hd // 2, 2).contiguous())
    return torch.view_as_real(z * rot).reshape(x.shape)
