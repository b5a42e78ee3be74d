"""(g) The GPU benchmark command (scripts/gpu/benchmark.sh) at its smallest setting (TOY=1: the tiny model, a few
steps) runs every variant on the device it finds and prints its tables; variants whose package is missing (Liger,
DeepSpeed, flash-attn) are left out by the script, so the test fails only on a variant that did not run (the
tier's own checks of those packages fail where the run does not allow them to be missing). On a GPU that is the path the CPU suite's
tests/test_benchmarks.py cannot take: flash-attn, CUDA timing, peak memory and MFU columns.
"""

from __future__ import annotations

import sys

import pytest

from gpu_tier_utils import require
from pretrain_utils import run_cli


@pytest.mark.gpu
def test_gpu_benchmark_prints_its_tables_at_toy_size(demo_paths, tmp_path, tier, record):
    env = {"TOY": "1", "OUT": str(tmp_path), "PYTHON": sys.executable}
    if not tier.cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""  # (TINYLLAMA_GPU_TIER_ON_CPU=1 on a GPU machine: the CPU path)
    proc = run_cli(["bash", "scripts/gpu/benchmark.sh"], env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    versions = (tmp_path / "versions.txt").read_text()
    assert ("card: CPU" in versions) != tier.cuda, versions
    table = [line for line in (tmp_path / "pretrain.md").read_text().splitlines() if line.startswith("| ")]
    rows = [line.split(" | ") for line in table[2:]]
    record("pretrain table", "\n" + "\n".join(table))
    assert table[0].startswith("| variant | attention | tokens/s") and len(rows) >= 5
    failed = [r[0] for r in rows if "skipped" in r[1]
              and (tier.cuda or "FlexAttention does not support backward on CPU" not in r[1])]  # (a torch limit)
    assert not failed, f"variants that did not run: {failed}\n" + "\n".join(table)
    names = [r[0][2:] for r in rows]
    assert any("compile" in n for n in names) and any("docmask" in n for n in names)
    if tier.cuda:
        from tinyllama.training.metrics import device_peak_flops

        for r in rows:  # peak memory measured on every row, and MFU where the card's peak FLOP/s is known
            assert r[6].strip(" |") != "n/a" and (r[5].endswith("%") or device_peak_flops() is None), r
    inference = (tmp_path / "inference.md").read_text()
    assert "| 1 | static + compile |" in inference and "| 2 | dynamic |" in inference


@pytest.mark.gpu
def test_pretrain_benchmark_runs_the_liger_variants(tier, record):
    """TOY=1 leaves Liger out (it is Triton, CUDA only); on a GPU the script's Liger variants must run too."""
    import importlib.util

    if not tier.cuda:
        pytest.skip("Liger's kernels are Triton kernels: CUDA only (the tier runs on CPU)")
    require("liger", None if importlib.util.find_spec("liger_kernel") else "liger-kernel is not installed")
    proc = run_cli([sys.executable, "scripts/benchmark_pretrain.py", "--model", "tiny", "--seq-len", "128",
                    "--micro-batch", "2", "--steps", "2", "--warmup", "1",
                    "--variants", "sdpa,sdpa+liger,sdpa+liger+docmask,fa2+liger+docmask"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    record("liger table", "\n" + "\n".join(table))
    rows = {line.split(" | ")[0][2:]: line for line in table[2:]}
    for variant in ("sdpa+liger", "sdpa+liger+docmask"):
        assert "skipped" not in rows[variant], rows[variant]
