import json
import logging

import pytest
import torch

from tinyllama.model import (MODEL_CONFIG_DIR, build_model, count_parameters, flops_per_token,
                             load_model_config, resolve_attn_implementation)


def test_tinyllama_1b_has_exactly_the_published_parameter_count():
    config = load_model_config("tinyllama-1.1b")
    assert count_parameters(config) == 1_100_048_384
    # per docs/reference.md: each embedding matrix 65,536,000, non-embedding 968,976,384
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(config)
    assert model.get_input_embeddings().weight.numel() == 65_536_000
    assert model.get_output_embeddings().weight.numel() == 65_536_000
    assert model.get_input_embeddings().weight is not model.get_output_embeddings().weight  # untied
    assert count_parameters(model) - 2 * 65_536_000 == 968_976_384


def test_tinyllama_1b_architecture_fields():
    c = load_model_config("tinyllama-1.1b")
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size) == (22, 2048, 5632)
    assert (c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == (32, 4, 32000)
    assert c.max_position_embeddings == 2048 and c.rms_norm_eps == 1e-5 and c.hidden_act == "silu"
    assert c.rope_parameters["rope_theta"] == 10000.0
    assert c.tie_word_embeddings is False and (c.bos_token_id, c.eos_token_id) == (1, 2)


def test_flops_per_token_matches_published_mfu_convention():
    # 6N + 12 L H Q T = 7.31 GFLOP at T=2048 (docs/reference.md, Speed)
    assert flops_per_token(load_model_config("tinyllama-1.1b"), 2048) == pytest.approx(7.31e9, rel=1e-3)


@pytest.mark.parametrize("path", sorted(MODEL_CONFIG_DIR.glob("*.json")), ids=lambda p: p.name)
def test_every_model_config_builds_and_runs(path):
    config = load_model_config(path)
    assert json.loads(path.read_text())["model_type"] == "llama"
    if count_parameters(config) > 50_000_000:
        return  # the 1.1B is covered on the meta device above
    model = build_model(path, attn_implementation="sdpa", seed=0)
    out = model(torch.randint(0, config.vocab_size, (2, 16)), labels=torch.randint(0, config.vocab_size, (2, 16)))
    assert out.logits.shape == (2, 16, config.vocab_size) and torch.isfinite(out.loss)


def test_an_unavailable_kernel_is_refused_and_auto_says_what_it_chose(caplog):
    """No silent fallback: a kernel asked for by name that cannot run here stops the build with one message naming
    why and the alternatives; auto picks flash_attention_2 or sdpa and logs which and why."""
    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")
    resolve_attn_implementation.cache_clear()
    for kernel, reason in (("flash_attention_2", "no CUDA device"), ("torch_varlen", "no CUDA device")):
        with pytest.raises(ValueError, match=f"attn_implementation {kernel} cannot run here: {reason}.*sdpa"):
            build_model("tiny", attn_implementation=kernel)
    with caplog.at_level(logging.INFO, logger="tinyllama.model"):
        assert resolve_attn_implementation("auto") == "sdpa"
        assert resolve_attn_implementation("auto") == "sdpa"
    said = [r.getMessage() for r in caplog.records if "attn_implementation auto" in r.getMessage()]
    assert said == ["attn_implementation auto: sdpa (no CUDA device)"]
    assert resolve_attn_implementation("eager") == "eager"
    with pytest.raises(ValueError, match="attn_implementation"):
        resolve_attn_implementation("flash3")


def test_seeded_builds_are_identical_and_init_from_checks_the_architecture(tmp_path):
    a, b = build_model("tiny", seed=1), build_model("tiny", seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    a.save_pretrained(tmp_path / "m")
    loaded = build_model("tiny", init_from=tmp_path / "m")
    assert torch.equal(loaded.lm_head.weight, a.lm_head.weight)
    with pytest.raises(ValueError, match="does not match the model config .*hidden_size: 128 vs 64"):
        build_model("demo", init_from=tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="model config not found"):
        build_model(tmp_path / "missing.json")


def test_tinyllama_init_draws_each_module_kind_with_its_published_std():
    """lit_gpt's init (docs/reference.md): embeddings and linear layers N(0, sqrt(2/(5d))), attention and MLP output
    projections N(0, 1/sqrt(d)/L), norms 1; for the 1.1B model 0.01398 and 0.001005. The recipe applies it to a
    from-scratch run by default; `init: hf` keeps transformers' N(0, 0.02)."""
    from tinyllama.model import init_weights, tinyllama_init_stds
    from tinyllama.training.args import PretrainArgs
    from tinyllama.training.core import setup_model

    std, out_std = tinyllama_init_stds(load_model_config("tinyllama-1.1b"))
    assert std == pytest.approx(0.01398, abs=5e-6) and out_std == pytest.approx(0.001005, abs=1e-6)  # (0.0010044)

    config = load_model_config("demo")  # d = 128, L = 4: stds 0.0559 and 0.0221, far from 0.02 and from each other
    std, out_std = tinyllama_init_stds(config)
    model = setup_model(PretrainArgs(model_config="demo", attn_implementation="sdpa", seed=0))
    kinds = {"embed_tokens": std, "lm_head": std, "q_proj": std, "k_proj": std, "v_proj": std, "gate_proj": std,
             "up_proj": std, "o_proj": out_std, "down_proj": out_std}
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.equal(p, torch.ones_like(p)), name
            continue
        kind = name.split(".")[-2]
        assert p.mean().abs() < 3 * kinds[kind] / p.numel() ** 0.5 + 1e-4, name
        assert p.std().item() == pytest.approx(kinds[kind], rel=0.06), (name, p.std().item(), kinds[kind])
    hf = setup_model(PretrainArgs(model_config="demo", attn_implementation="sdpa", seed=0, init="hf"))
    assert hf.model.layers[0].mlp.down_proj.weight.std().item() == pytest.approx(0.02, rel=0.06)
    again = build_model("demo", seed=0)
    init_weights(again)
    assert torch.equal(again.model.layers[0].self_attn.o_proj.weight, model.model.layers[0].self_attn.o_proj.weight)


def test_the_config_accepts_exactly_the_kernels_the_builder_knows():
    from tinyllama.training.args import ATTENTION_CHOICES as config_choices
    from tinyllama.model import ATTENTION_CHOICES

    assert config_choices == ATTENTION_CHOICES
