"""The pretraining recipe on the GPU path, in-process (tests/pretrain_utils.run_inprocess), on the embedded demo data
and tokenizer (4096 tokens: the recipe accepts a tokenizer smaller than the model's vocabulary):

(d) configs/pretrain/tinyllama-1.1b.yaml as it is (the 1.1B model, seq_len 2048, bf16) with the run's attention kernel
    (``TINYLLAMA_GPU_ATTENTION``; missing, it fails unless the run allows it) for 3 steps at micro batch 4 (about
    half of an 80 GB card): finite losses, peak memory and MFU logged, and the kernel that ran is the one asked for.
(e) ``compile: true`` gives the first step's loss of the same run without it; and with document masking under a
    varlen kernel the compiled model is one graph (no break for the document offsets: forward_loss computes them on
    the host) with the eager loss.

With TINYLLAMA_GPU_TIER_ON_CPU=1 the same runs use configs/model/tiny.json, seq_len 64, fp32 and sdpa.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

from gpu_tier_utils import TRAIN_ATTENTION, build, packed_batch, reference_varlen_attn, require
from pretrain_utils import REPO, metrics, run_inprocess

CONFIG = REPO / "configs" / "pretrain" / "tinyllama-1.1b.yaml"


def demo_overrides(tmp_path, tier, **sizes) -> list[str]:
    """The real config, pointed at the demo data, sized for the tier; ``sizes`` override the tier's sizes."""
    if tier.cuda:
        size = dict(model_config="tinyllama-1.1b", seq_len=2048, micro_batch_size=4, global_batch_size=8,
                    mixed_precision="bf16")
    else:
        size = dict(model_config="tiny", seq_len=64, micro_batch_size=4, global_batch_size=8,
                    mixed_precision='"no"',  # (quoted: a bare no is YAML's false)
                    attn_implementation="sdpa", peak_flops=1e12)  # (no peak FLOP/s to look up on a CPU)
    size.update(sizes)
    out = ["--tokenizer", str(REPO / "data/demo/tokenizer"), "--data_dir", str(REPO / "data/demo/tokenized"),
           "--prepare_config", str(REPO / "configs/data/demo.yaml"),  # (prepares the demo shards once)
           "--output_dir", str(tmp_path), "--num_workers", "0", "--warmup_steps", "0", "--log_every", "1",
           "--eval_every", "0", "--save_every", "1000", "--keep_last", "1", "--report_to", "[none]"]
    for key, value in size.items():
        out += [f"--{key}", str(value)]
    return out


@pytest.fixture
def pretrain_module():
    sys.path.insert(0, str(REPO / "recipes"))
    import pretrain

    return pretrain


@pytest.mark.gpu
def test_bf16_step_of_the_1b_model_at_seq_2048(demo_paths, tmp_path, tier, record, monkeypatch, pretrain_module):
    """(d) The real 1.1B config for 3 steps: finite losses, peak memory and MFU in metrics.jsonl, the attention
    kernel asked for is the one the model ran."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from tinyllama.model import attn_unavailable_reason
    from tinyllama.training.metrics import device_peak_flops

    attn = TRAIN_ATTENTION if tier.cuda else "sdpa"
    require(attn, attn_unavailable_reason(attn))
    extra = {"attn_implementation": attn}
    if tier.cuda and device_peak_flops() is None:
        extra["peak_flops"] = 989e12  # a GPU missing from PEAK_FLOPS: MFU against an H100's peak, said in the log
        record("peak FLOP/s", f"{torch.cuda.get_device_name()} is not in PEAK_FLOPS: MFU against 989e12")
    built = {}
    original_setup = pretrain_module.setup_model

    def setup_model(args):
        built["model"] = original_setup(args)
        return built["model"]

    calls = {"n": 0}
    kernel = ALL_ATTENTION_FUNCTIONS[attn]

    def counted(*args, **kwargs):
        calls["n"] += 1
        return kernel(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "setup_model", setup_model)
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, attn, counted)
    if tier.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()  # this run's peak, not an earlier test's
    try:
        summary = run_inprocess(CONFIG, *demo_overrides(tmp_path, tier, max_steps=3, **extra))
        config = built["model"].config
    finally:
        built.clear()
        if tier.cuda:
            torch.cuda.empty_cache()

    rows = [r for r in metrics(tmp_path) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3] and summary["skipped_steps"] == 0
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert config._attn_implementation == attn
    layers = config.num_hidden_layers
    assert calls["n"] >= 3 * 2 * layers, f"{attn} ran {calls['n']} times, not once per layer and micro-batch"
    last = rows[-1]
    record("attention", f"{attn} ({calls['n']} calls over {layers} layers)")
    record("losses", [round(r["loss"], 4) for r in rows])
    record("mfu (last step)", f"{100 * last['mfu']:.1f}%")
    record("tokens/s (last step)", f"{last['tokens_per_sec']:,.0f}")
    assert last["mfu"] > 0
    if tier.cuda:
        peak = max(r["peak_memory_gb"] for r in rows)
        record("peak memory GB", f"{peak:.1f}")
        assert 0 < peak < 79, f"micro batch 4 at seq_len 2048 should fit an 80 GB card; peak {peak:.1f} GB"
    else:
        assert "peak_memory_gb" not in last  # (CUDA's allocator is what measures it)


@pytest.mark.gpu
def test_compile_gives_the_eager_loss(demo_paths, tmp_path, tier, record):
    """(e) ``compile: true`` for 2 steps: the first step's loss equals the run without compile (same weights, same
    data). Tolerance: fp32 (CPU) 1e-5 relative, rounding only; bf16 autocast 5e-3 relative: inductor fuses
    pointwise ops and may skip intermediate bf16 roundings that eager does (2^-8 = 0.4% per rounding), the mean
    loss over thousands of tokens averages most of it out."""
    import torch._dynamo

    sizes = dict(max_steps=2) if not tier.cuda else dict(max_steps=2, model_config="demo", seq_len=512)
    eager = run_inprocess(CONFIG, *demo_overrides(tmp_path / "eager", tier, **sizes))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        compiled = run_inprocess(CONFIG, *demo_overrides(tmp_path / "compiled", tier, compile="true", **sizes))
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()
    first = {name: [r["loss"] for r in metrics(tmp_path / name) if "loss" in r] for name in ("eager", "compiled")}
    rel = 5e-3 if tier.low == torch.bfloat16 else 1e-5
    record("step losses", f"eager {first['eager']}, compiled {first['compiled']} ({graphs} graphs compiled)")
    assert graphs >= 1, "compile: true compiled nothing"
    assert eager["skipped_steps"] == compiled["skipped_steps"] == 0
    assert all(math.isfinite(x) for x in first["compiled"])
    assert first["compiled"][0] == pytest.approx(first["eager"][0], rel=rel)


@pytest.mark.gpu
def test_compile_with_document_masking_is_one_graph_with_the_eager_loss(tier, record, monkeypatch):
    """(e) torch.compile(fullgraph=True) of the model under the run's varlen kernel with document masking: one graph
    (transformers derives the document offsets with ``.nonzero()``/``.item()`` when they are not handed over, a
    break in every layer; forward_loss hands them over), and the eager loss. On CPU: torch_varlen through the
    reference of its contract (tests/gpu/gpu_tier_utils.py), which traces like the kernel's custom op."""
    import torch._dynamo

    from tinyllama.model import attn_unavailable_reason
    from tinyllama.training.core import forward_loss

    attn = TRAIN_ATTENTION if tier.cuda else "torch_varlen"
    if tier.cuda:
        require(attn, attn_unavailable_reason(attn))
    else:
        monkeypatch.setattr(pytest.importorskip("torch.nn.attention.varlen"), "varlen_attn", reference_varlen_attn)
    model = build(tier.small_model, attn, tier).train()
    batch = packed_batch(3, 256 if tier.cuda else 64, model.config.vocab_size)
    with tier.autocast():
        eager = forward_loss(model, batch, True, tier.device).item()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        compiled = torch.compile(model, fullgraph=True)
        with tier.autocast():
            loss = forward_loss(compiled, batch, True, tier.device)
        loss.backward()
        breaks = dict(torch._dynamo.utils.counters["graph_break"])
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()
    record(f"{attn} + document masking, compiled", f"loss {loss.item():.6f} (eager {eager:.6f}); {graphs} graph(s), "
                                                   f"breaks {breaks or 'none'}")
    assert not breaks and graphs == 1
    assert loss.item() == pytest.approx(eager, rel=5e-3 if tier.low == torch.bfloat16 else 1e-5)
