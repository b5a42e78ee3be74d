"""The benchmark scripts run at toy size on CPU and print their tables (no timing is asserted: benchmarks measure,
tests check behaviour). This keeps the GPU benchmarks from rotting between GPU sessions."""

import sys

from pretrain_utils import run_cli


def test_pretrain_benchmark_prints_a_row_per_variant_and_skips_missing_kernels():
    proc = run_cli([sys.executable, "scripts/benchmark_pretrain.py", "--model", "tiny", "--seq-len", "32",
                    "--micro-batch", "2", "--steps", "1", "--warmup", "1", "--variants", "sdpa,sdpa+docmask,fa2"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| variant | attention | tokens/s")
    assert table[1].startswith("| sdpa | sdpa |") and table[2].startswith("| sdpa+docmask | sdpa |")
    assert "| fa2 | skipped:" in table[3]


def test_inference_benchmark_prints_ttft_and_decode_rows():
    proc = run_cli([sys.executable, "scripts/benchmark_inference.py", "--model", "tiny", "--batch-sizes", "1,2",
                    "--prompt-len", "8", "--new-tokens", "4", "--repeats", "1"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert len(rows) == 4 and all("x |" in r for r in rows)
