"""scripts/convert_checkpoint.py: TinyLlama's lit_gpt .pth and Meta's consolidated.*.pth, written from their published
layouts (tests/convert_helpers.py), import to folders with the original's logits; an export goes to litgpt's names and
back unchanged; the wrong format or a shape that does not fit stops with one message naming the tensor.

The model has TinyLlama's attention shape (32 query heads sharing 4 key/value heads) and a fast RoPE (base 100),
with weights large enough that each layout mistake moves the logits: every test also shows that the wrong layout
gives other logits, so the comparison can fail. The checks through litgpt's own code are tests/test_interop_litgpt.py
(make test-interop).
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from convert_helpers import (GQA_CONFIG, gqa_model, hf_state, logits_of, meta_rotary, save_gqa_folder,
                             save_lit_gpt_checkpoint, save_meta_folder, token_ids)
from pretrain_utils import run_cli
from tinyllama.convert import ConversionError, convert

WRONG = 1e-2  # a layout mistake moves the logits by far more than this (float32 noise is ~1e-6)


@pytest.fixture(scope="module")
def original(tmp_path_factory, demo_paths):
    """(folder, model, state, logits): the GQA model saved as an export, with the demo tokenizer."""
    folder = tmp_path_factory.mktemp("original") / "model"
    model = save_gqa_folder(folder, demo_paths["tokenizer"])
    return folder, model, hf_state(model), logits_of(model, token_ids())


def assert_same_model(out, state, logits):
    from transformers import AutoModelForCausalLM

    imported = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    got = imported.state_dict()
    assert sorted(got) == sorted(state)
    different = [k for k in state if not torch.equal(got[k], state[k])]
    assert not different, f"tensors changed by the conversion: {different[:4]}"
    torch.testing.assert_close(logits_of(imported, token_ids()), logits, rtol=0, atol=1e-6)
    for key in ("num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps", "vocab_size"):
        assert getattr(imported.config, key) == GQA_CONFIG[key], key
    assert imported.config.rope_parameters["rope_theta"] == 100.0


def config_file(tmp_path, config=GQA_CONFIG, name="arch.json"):
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


def test_tinyllama_lit_gpt_checkpoint_imports_with_the_original_logits(original, tmp_path, demo_paths):
    folder, model, state, logits = original
    pth = save_lit_gpt_checkpoint(tmp_path / "iter-000480-ckpt.pth", state, GQA_CONFIG)
    out = convert("lit_gpt-to-hf", pth, tmp_path / "hf", model_config=str(config_file(tmp_path)),
                  tokenizer=str(demo_paths["tokenizer"] / "tokenizer.model"))
    assert_same_model(out, state, logits)
    assert (out / "tokenizer.model").is_file() and (out / "generation_config.json").is_file()
    from transformers import AutoTokenizer

    text = "def f(x):\n    return x  # TinyLlama"
    assert AutoTokenizer.from_pretrained(str(out))(text)["input_ids"] == \
        AutoTokenizer.from_pretrained(str(folder))(text)["input_ids"]

    # the control: the same tensors with all queries, keys and values stacked (not grouped) give other logits
    wrong = save_lit_gpt_checkpoint(tmp_path / "stacked.pth", state, GQA_CONFIG, grouped=False)
    out = convert("lit_gpt-to-hf", wrong, tmp_path / "hf-wrong", model_config=str(config_file(tmp_path)),
                  tokenizer=str(demo_paths["tokenizer"]))
    assert (logits_of(out, token_ids()) - logits).abs().max() > WRONG


@pytest.mark.parametrize("shards", [1, 2])
def test_meta_checkpoint_imports_with_the_original_logits(original, tmp_path, demo_paths, shards):
    _, _, state, logits = original
    src = save_meta_folder(tmp_path / "meta" / "tiny", state, GQA_CONFIG, shards=shards)
    (tmp_path / "meta" / "tokenizer.model").write_bytes((demo_paths["tokenizer"] / "tokenizer.model").read_bytes())
    out = convert("meta-to-hf", src, tmp_path / "hf", context=GQA_CONFIG["max_position_embeddings"])
    assert_same_model(out, state, logits)
    assert (out / "tokenizer.model").is_file()  # found one level up, where Meta's downloads keep it

    # control: without the rotary reordering the logits differ
    if shards == 1:
        wrong = save_meta_folder(tmp_path / "meta-unpermuted", state, GQA_CONFIG, permute=False)
        out = convert("meta-to-hf", wrong, tmp_path / "hf-wrong", context=256, tokenizer=str(demo_paths["tokenizer"]))
        assert (logits_of(out, token_ids()) - logits).abs().max() > WRONG


def test_meta_layout_is_meta_rotary_convention(original, tmp_path, demo_paths):
    """The Meta writer's order is Meta's: attention scores from its wq/wk with Meta's complex rotary over adjacent
    pairs equal those of the imported q_proj/k_proj with transformers' own rotary embedding."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    _, _, state, _ = original
    src = save_meta_folder(tmp_path / "meta", state, GQA_CONFIG)
    out = convert("meta-to-hf", src, tmp_path / "hf", context=256, tokenizer=str(demo_paths["tokenizer"]))
    meta = torch.load(src / "consolidated.00.pth")
    from transformers import AutoModelForCausalLM

    imported = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    c, t = GQA_CONFIG, 40
    n_head, n_kv, hd, per = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], 8
    x = torch.randn(t, c["hidden_size"], generator=torch.Generator().manual_seed(2))

    def scores(q, k):  # (t, heads, hd), (t, kv heads, hd) -> (heads, t, t)
        return torch.einsum("thd,shd->hts", q.double(), k.double().repeat_interleave(per, dim=1))

    q = meta_rotary((x @ meta["layers.0.attention.wq.weight"].T).reshape(t, n_head, hd), 100.0)
    k = meta_rotary((x @ meta["layers.0.attention.wk.weight"].T).reshape(t, n_kv, hd), 100.0)
    reference = scores(q, k)
    attn = imported.model.layers[0].self_attn
    cos, sin = imported.model.rotary_emb(x[None], torch.arange(t)[None])
    q = attn.q_proj(x).reshape(1, t, n_head, hd).transpose(1, 2)
    k = attn.k_proj(x).reshape(1, t, n_kv, hd).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(scores(q[0].transpose(0, 1), k[0].transpose(0, 1)), reference, rtol=1e-4, atol=1e-4)
    assert (scores(q[0].transpose(0, 1), k[0].transpose(0, 1)) - reference).abs().max() < 1e-3 < \
        reference.abs().max()


def test_export_to_litgpt_and_back_is_the_same_model(original, tmp_path):
    folder, _, state, logits = original
    lit = convert("hf-to-litgpt", folder, tmp_path / "litgpt")
    import yaml

    cfg = yaml.safe_load((lit / "model_config.yaml").read_text())
    assert (cfg["n_head"], cfg["n_query_groups"], cfg["head_size"], cfg["rope_base"]) == (32, 4, 8, 100)
    assert (cfg["mlp_class_name"], cfg["norm_class_name"], cfg["parallel_residual"], cfg["bias"]) == \
        ("LLaMAMLP", "RMSNorm", False, False)
    saved = torch.load(lit / "lit_model.pth")
    assert saved["transformer.h.0.attn.qkv.weight"].shape == ((32 + 2 * 4) * 8, 256)
    assert (lit / "tokenizer.model").is_file() and (lit / "tokenizer.json").is_file()
    back = convert("litgpt-to-hf", lit, tmp_path / "hf")  # the tokenizer comes from the litgpt folder
    assert_same_model(back, state, logits)
    assert (back / "tokenizer.model").is_file()


def test_wrong_format_or_shape_stops_with_one_message_naming_the_tensor(original, tmp_path, demo_paths):
    _, _, state, _ = original
    tok = str(demo_paths["tokenizer"])
    arch = str(config_file(tmp_path))
    meta = save_meta_folder(tmp_path / "meta", state, GQA_CONFIG)

    # the command line: a Meta file given as a lit_gpt one; one line, no traceback, nothing written
    out = tmp_path / "out"
    proc = run_cli([sys.executable, "scripts/convert_checkpoint.py", "lit_gpt-to-hf", str(meta / "consolidated.00.pth"),
                    "--out", str(out), "--config", arch, "--tokenizer", tok])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "not a lit_gpt/litgpt Llama checkpoint" in proc.stderr and "look like Meta (use meta-to-hf)" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))

    # a lit_gpt file of another shape than the architecture: the tensor and both shapes are named
    pth = save_lit_gpt_checkpoint(tmp_path / "ckpt.pth", state, GQA_CONFIG)
    eight_kv = config_file(tmp_path, {**GQA_CONFIG, "num_key_value_heads": 8}, "eight-kv.json")
    with pytest.raises(ConversionError, match=r"tensor transformer\.h\.0\.attn\.attn\.weight has shape "
                                              r"\(320, 256\), expected \(384, 256\)"):
        convert("lit_gpt-to-hf", pth, out, model_config=str(eight_kv), tokenizer=tok)
    assert not out.exists()

    # a missing tensor, a left-over one (an unmerged LoRA), a tensor that is not one
    lit = save_lit_gpt_checkpoint(tmp_path / "ok.pth", state, GQA_CONFIG)
    raw = torch.load(lit)
    del raw["model"]["transformer.h.1.norm_2.weight"]
    torch.save(raw, tmp_path / "missing.pth")
    with pytest.raises(ConversionError, match=r"missing tensor transformer\.h\.1\.norm_2\.weight"):
        convert("lit_gpt-to-hf", tmp_path / "missing.pth", out, model_config=arch, tokenizer=tok)
    raw = torch.load(lit)
    raw["model"]["transformer.h.0.attn.attn.lora_A"] = torch.zeros(4, 256)
    torch.save(raw, tmp_path / "lora.pth")
    with pytest.raises(ConversionError, match=r"unexpected tensor transformer\.h\.0\.attn\.attn\.lora_A"):
        convert("lit_gpt-to-hf", tmp_path / "lora.pth", out, model_config=arch, tokenizer=tok)
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ConversionError, match="cannot be read as a PyTorch state dict"):
        convert("lit_gpt-to-hf", tmp_path / "text.pth", out, model_config=arch, tokenizer=tok)

    # Meta: a shape that does not fit params.json; params.json asking for what is not converted
    params = json.loads((meta / "params.json").read_text())
    (meta / "params.json").write_text(json.dumps({**params, "n_kv_heads": 8}))
    with pytest.raises(ConversionError, match=r"tensor layers\.0\.attention\.wk\.weight has shape \(32, 256\), "
                                              r"expected \(64, 256\)"):
        convert("meta-to-hf", meta, out, tokenizer=tok)
    (meta / "params.json").write_text(json.dumps({**params, "use_scaled_rope": True}))
    with pytest.raises(ConversionError, match="use_scaled_rope is set"):
        convert("meta-to-hf", meta, out, tokenizer=tok)

    # litgpt: a config that is not a plain Llama; a folder that is not litgpt's
    lit_dir = convert("hf-to-litgpt", original[0], tmp_path / "lit")
    cfg = (lit_dir / "model_config.yaml").read_text()
    (lit_dir / "model_config.yaml").write_text(cfg.replace("parallel_residual: false", "parallel_residual: true"))
    with pytest.raises(ConversionError, match=r"parallel_residual=True \(a plain Llama has False\)"):
        convert("litgpt-to-hf", lit_dir, out)
    with pytest.raises(ConversionError, match="no model_config.yaml"):
        convert("litgpt-to-hf", meta, out)

    # a tokenizer that is not the model's; an --out that already holds something
    with pytest.raises(ConversionError, match=r"has 4096 tokens but the checkpoint's embedding has 1024 rows"):
        small = {**GQA_CONFIG, "vocab_size": 1024}
        small_state = hf_state(gqa_model(small))
        convert("lit_gpt-to-hf", save_lit_gpt_checkpoint(tmp_path / "small.pth", small_state, small), out,
                model_config=str(config_file(tmp_path, small, "small.json")), tokenizer=tok)
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="exists and is not empty"):
        convert("lit_gpt-to-hf", lit, out, model_config=arch, tokenizer=tok)
    assert (out / "keep.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".tmp-*"))
