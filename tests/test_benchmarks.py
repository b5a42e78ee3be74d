"""The benchmark scripts run at toy size on CPU and print their tables (no timing is asserted: benchmarks measure,
tests check behaviour). This keeps the GPU benchmarks from rotting between GPU sessions."""

import sys

import pytest

from pretrain_utils import load_script, run_cli


# each benchmark runs in its own processes (minutes in all): `make test-bench`, which .ci/run calls, runs them;
# make test and make test-fast leave them out
pytestmark = [pytest.mark.slow, pytest.mark.bench]


@pytest.fixture(scope="module")
def toy_gpu_run(tmp_path_factory, demo_paths):
    """scripts/gpu/benchmark.sh with TOY=1, run once for the module: it runs benchmark_pretrain.py
    (``--model tiny --seq-len 32 --micro-batch 2 --steps 1 --warmup 1``) over the CPU variants,
    benchmark_inference.py (``--model tiny --batch-sizes 1,2 --prompt-len 8 --new-tokens 4 --repeats 1
    --compile-on-cpu``) and its speculative table (``--draft tiny --prompt-lookup 10``, prompts from the demo
    corpus), each table tee'd to OUT: the tests of the two scripts read those tables (one run of each script
    instead of one per test: every launch costs seconds of CPU in imports alone)."""
    out = tmp_path_factory.mktemp("gpu-benchmark")
    proc = run_cli(["bash", "scripts/gpu/benchmark.sh"], env={"TOY": "1", "OUT": str(out), "PYTHON": sys.executable},
                   timeout=900)
    return proc, out


def test_pretrain_benchmark_prints_a_row_per_variant_and_skips_missing_kernels(toy_gpu_run, monkeypatch,
                                                                                capsys):
    proc, out = toy_gpu_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = [line for line in (out / "pretrain.md").read_text().splitlines() if line.startswith("| ")]
    assert table[0].startswith("| variant | attention | tokens/s")
    assert table[1].startswith("| sdpa | sdpa |")
    assert next(ln for ln in table if ln.startswith("| sdpa+docmask ")).startswith("| sdpa+docmask | sdpa |")
    # a kernel that is not installed (flash-attn, on CPU) is a skipped row, not a failed run (the script's main()
    # in this process: the requirement is checked before any variant's process is started)
    monkeypatch.setattr(sys, "argv", ["benchmark_pretrain.py", "--model", "tiny", "--seq-len", "32",
                                      "--micro-batch", "2", "--steps", "1", "--warmup", "1", "--variants", "fa2"])
    load_script("scripts/benchmark_pretrain.py").main()
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| variant | attention | tokens/s")
    assert "| fa2 | skipped:" in table[1]


def test_inference_benchmark_prints_ttft_and_decode_rows(toy_gpu_run):
    proc, out = toy_gpu_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split(" | ")[:2] for line in (out / "inference.md").read_text().splitlines()
            if line.startswith(("| 1 ", "| 2 "))]
    assert rows == [[f"| {b}", c] for b in (1, 2) for c in ("dynamic", "static", "static + compile")]


def test_inference_benchmark_speculative_table(toy_gpu_run):
    """--draft and --prompt-lookup add a batch-1 table; a draft with the target's weights (the same config and seed)
    has every proposal accepted, and every output equals plain greedy's. (The TOY run's draft part:
    ``--model tiny --draft tiny --prompt-lookup 10 --batch-sizes 1 --prompt-len 16 --new-tokens 8 --prompts 2``.)"""
    proc, out = toy_gpu_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.strip("| ").split(" | ") for line in (out / "draft.md").read_text().splitlines()
            if line.startswith(("| plain", "| assisted", "| prompt lookup"))]
    assert [r[0] for r in rows] == ["plain greedy", "assisted: draft tiny", "prompt lookup, 10 tokens"]
    assert [r[-1] for r in rows] == ["2/2"] * 3  # equal to plain greedy, token for token
    assert rows[1][4] == "100.0%" and float(rows[1][3]) > 1.5  # all accepted: several tokens per forward pass
    assert rows[0][3] == "1.00" and rows[0][4] == "-"


def test_gpu_benchmark_command_runs_every_part_at_toy_size(toy_gpu_run):
    """scripts/gpu/benchmark.sh is the one command a GPU session runs; TOY=1 takes the same steps on CPU."""
    proc, tmp_path = toy_gpu_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torch " in (tmp_path / "versions.txt").read_text()
    rows = [ln.split(" | ")[0][2:] for ln in (tmp_path / "pretrain.md").read_text().splitlines()
            if ln.startswith("| ") and not ln.startswith("| variant")]
    # every throughput option is in the list (Liger left out on CPU), each variant once
    assert rows == ["sdpa", "sdpa+compile", "sdpa+ckpt+mb4", "flex+docmask", "sdpa+docmask", "sdpa+zero2"]
    pretrain = (tmp_path / "pretrain.md").read_text()
    assert "| sdpa+compile | sdpa |" in pretrain and "| sdpa+zero2 | sdpa |" in pretrain  # ran, not skipped
    inference = (tmp_path / "inference.md").read_text()
    assert "| 1 | static |" in inference and "| 2 | static + compile |" in inference
    assert "| assisted: draft tiny |" in (tmp_path / "draft.md").read_text()
    batched = (tmp_path / "batched.md").read_text()  # the batched-decoding row beside the article's figure
    assert "7,094.5 tokens/s" in batched and "| 3 | dynamic |" in batched and "| 3 | static |" in batched


def test_data_benchmark_prints_every_way_each_in_its_own_process(demo_paths):
    proc = run_cli([sys.executable, "scripts/benchmark_data.py", "--mb", "0.3", "--repeat", "1", "--workers", "0",
                    "--skip_run_clm"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split(" | ")[0] for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["| raw tokenizer: `encode_batch_fast` on the pipeline's pieces (documents cut at 8192 "
                        "characters), all cores",
                        "| raw tokenizer + reading the ids (`[e.ids for e in encodings]`)",
                        "| raw tokenizer on whole documents (one run, for information)",
                        "| pipeline: `prepare_data`, num_workers=0"]
    pipeline = next(line for line in proc.stdout.splitlines() if line.startswith("| pipeline"))
    bytes_per_token = float(pipeline.strip(" |").split(" | ")[-1])  # from the shards a real prepare_data run wrote
    assert 2.0 <= bytes_per_token < 2.3  # uint16 tokens, plus the document index and manifest of a small corpus
    assert "loader: MixtureDataset[i]" in proc.stdout


def cpu_benchmark(tmp_path, *args):
    """scripts/benchmark_cpu_inference.py's main() in this process, on the tiny model at toy lengths."""
    return load_script("scripts/benchmark_cpu_inference.py").main(
        ["--model", "tiny", "--prompt-len", "8", "--new-tokens", "4", "--repeats", "1", "--bandwidth-gib", "0.05",
         "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "table.md"), *args])


def test_cpu_inference_benchmark_rows_against_the_bandwidth_limit(tmp_path, demo_paths):
    """Each row's limit is the measured bandwidth over the bytes of weights a token reads: every parameter but the
    input embedding, at the row's element size."""
    from tinyllama.model import count_parameters, load_model_config

    rows = cpu_benchmark(tmp_path, "--types", "", "--dtypes", "fp32,bf16", "--caches", "dynamic,static")
    assert [r["runtime"] for r in rows] == [f"transformers {d}, {c} cache" for d in ("fp32", "bf16")
                                            for c in ("dynamic", "static")]
    read = count_parameters(load_model_config("tiny"), exclude_input_embedding=True)
    assert [r["bytes"] for r in rows] == [4 * read, 4 * read, 2 * read, 2 * read]
    bandwidth = rows[0]["limit_tok_s"] * rows[0]["bytes"]  # the same measured bandwidth for every row
    for r in rows:
        assert r["decode_tok_s"] > 0 and r["ttft_s"] > 0
        assert r["limit_tok_s"] * r["bytes"] == pytest.approx(bandwidth)
        assert r["fraction"] == pytest.approx(r["decode_tok_s"] / r["limit_tok_s"])
    table = (tmp_path / "table.md").read_text()
    assert "memory read bandwidth:" in table and table.count("| transformers ") == 4


@pytest.mark.llama_cpp
def test_cpu_inference_benchmark_llama_cpp_rows_read_the_gguf_weights(tmp_path, demo_paths):
    """llama.cpp's rows: GGUF files made by llama.cpp's converter and quantiser; an f16 file's bytes per token are
    the model's matrices at 2 bytes and its norms at 4 (GGUF keeps them in f32), the token embedding left out."""
    import json

    from pretrain_utils import REPO

    rows = cpu_benchmark(tmp_path, "--types", "f16,q8_0", "--no-transformers")
    assert [r["runtime"] for r in rows] == ["llama.cpp f16", "llama.cpp q8_0"]
    c = json.loads((REPO / "configs" / "model" / "tiny.json").read_text())
    d, layers, hd = c["hidden_size"], c["num_hidden_layers"], c["head_dim"]
    matrices = layers * (d * hd * (2 * c["num_attention_heads"] + 2 * c["num_key_value_heads"])
                         + 3 * d * c["intermediate_size"]) + c["vocab_size"] * d  # + the output head
    norms = (2 * layers + 1) * d
    assert rows[0]["bytes"] == 2 * matrices + 4 * norms
    assert rows[1]["bytes"] < rows[0]["bytes"] and all(r["decode_tok_s"] > 0 for r in rows)
    assert (tmp_path / "work" / "tiny-q8_0.gguf").is_file()  # made once, reused by the next run
