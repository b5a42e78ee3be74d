"""Pretraining throughput: tokens/s, MFU and peak memory per variant, and the recipe loop's overhead.

Two modes, both printing one table with ratios measured in the same run:

1. Variants (GPU, or CPU at toy size): each variant runs in a fresh process with the recipe's own model setup,
   loss and optimizer (``tinyllama.training.core``), timing optimizer steps after warm-up (CUDA events on a GPU).

       python scripts/benchmark_pretrain.py --model tinyllama-1.1b --seq-len 2048 \
           --variants sdpa,fa2,fa2+liger,fa2+liger+compile,fa2+ckpt+mb16,fa2+docmask,fa2+zero2

   A variant is options joined by '+': an attention kernel (sdpa | fa2 | varlen | eager | flex; varlen is
   torch_varlen, torch's own FlashAttention varlen kernel: tinyllama/attention.py), ``liger``, ``compile``,
   ``ckpt`` (activation checkpointing), ``mbN`` (micro batch N), ``docmask`` (document masking from packed
   position_ids), ``zero2`` (DeepSpeed ZeRO-2 on one device instead of plain/DDP). Variants whose requirements are
   missing (a kernel, liger-kernel, deepspeed, CUDA) are reported as skipped, with the reason, not failed.

2. ``--loop-overhead`` (CPU, the demo model and data): the recipe (``recipes/pretrain.py``, in-process) against a
   bare PyTorch loop on the same model, data and batch, side by side; the target is at most 10% step time added.

FLOPs per token = 6·N + 12·L·H·Q·T (``tinyllama.model.flops_per_token``); peak FLOP/s from
``tinyllama.training.metrics.PEAK_FLOPS`` or ``--peak-flops``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------------------------
def parse_variant(spec: str, default_mb: int) -> dict:
    v = {"name": spec, "attn": "sdpa", "liger": False, "compile": False, "ckpt": False, "mb": default_mb,
         "docmask": False, "zero2": False}
    for opt in spec.split("+"):
        if opt in ("sdpa", "eager"):
            v["attn"] = opt
        elif opt == "fa2":
            v["attn"] = "flash_attention_2"
        elif opt == "flex":
            v["attn"] = "flex_attention"
        elif opt == "varlen":
            v["attn"] = "torch_varlen"
        elif opt in ("liger", "compile", "ckpt", "docmask", "zero2"):
            v[opt] = True
        elif opt.startswith("mb") and opt[2:].isdigit():
            v["mb"] = int(opt[2:])
        else:
            raise SystemExit(f"unknown variant option {opt!r} in {spec!r}")
    return v


def missing_requirement(v: dict) -> str | None:
    import importlib.util

    from tinyllama.model import attn_unavailable_reason

    if reason := attn_unavailable_reason(v["attn"]):
        return f"{v['attn']}: {reason}"
    if v["liger"] and (importlib.util.find_spec("liger_kernel") is None or not torch.cuda.is_available()):
        return "liger-kernel / CUDA not available"
    if v["zero2"] and importlib.util.find_spec("deepspeed") is None:
        return "deepspeed is not installed"
    return None


def packed_batch(mb: int, seq_len: int, vocab: int, generator: torch.Generator) -> dict:
    """Random tokens in documents of random length (mean ~seq_len/4), position_ids restarting at each one."""
    ids = torch.randint(3, vocab, (mb, seq_len + 1), generator=generator)
    pos = torch.empty_like(ids)
    for row in range(mb):
        i = 0
        while i < seq_len + 1:
            n = int(torch.randint(16, max(17, seq_len // 2), (1,), generator=generator))
            n = min(n, seq_len + 1 - i)
            pos[row, i:i + n] = torch.arange(n)
            ids[row, i] = 1  # BOS at each document start, as the data layer packs them
            i += n
    return {"input_ids": ids, "position_ids": pos}


def run_variant(v: dict, a) -> dict:
    """One variant, in this process: build with the recipe's code, time ``a.steps`` optimizer steps."""
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin

    from tinyllama.model import count_parameters, flops_per_token, resolve_attn_implementation
    from tinyllama.training.core import fill_deepspeed_config, forward_loss, process_group_kwargs, setup_model
    from tinyllama.training.args import PretrainArgs
    from tinyllama.training.metrics import device_peak_flops
    from tinyllama.training.optim import build_optimizer

    cuda = torch.cuda.is_available()
    args = PretrainArgs(  # the recipe's own arguments (its defaults for everything not set here)
        model_config=a.model, init_from=None, attn_implementation=v["attn"], trust_remote_code=False, seed=0,
        use_liger_kernel=v["liger"], gradient_checkpointing=v["ckpt"], weight_decay=0.1,
        no_decay_norm_and_embeddings=False, learning_rate=4e-4, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8,
        micro_batch_size=v["mb"], max_grad_norm=1.0)
    plugin = None
    if v["zero2"]:
        for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511", "RANK": "0", "LOCAL_RANK": "0",
                           "WORLD_SIZE": "1"}.items():
            os.environ.setdefault(key, value)
        plugin = DeepSpeedPlugin(hf_ds_config=str(REPO / "configs/deepspeed/zero2.json"))
    accelerator = Accelerator(mixed_precision="bf16" if cuda else "no", deepspeed_plugin=plugin,
                              kwargs_handlers=process_group_kwargs(deepspeed=plugin is not None))
    model = setup_model(args, accelerator)
    attn = resolve_attn_implementation(v["attn"])
    n_params = count_parameters(model)
    flops = flops_per_token(model.config, a.seq_len, count_parameters(model, exclude_input_embedding=True))
    if plugin is None:
        model = model.to(accelerator.device)
    optimizer = build_optimizer(model, args)
    fill_deepspeed_config(accelerator, args, 1)
    if v["compile"]:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    gen = torch.Generator().manual_seed(0)
    vocab = accelerator.unwrap_model(model).config.vocab_size
    batches = [packed_batch(v["mb"], a.seq_len, vocab, gen) for _ in range(4)]

    def step(i: int) -> None:
        loss = forward_loss(model, batches[i % len(batches)], v["docmask"], accelerator.device)
        accelerator.backward(loss)
        if plugin is None:
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    for i in range(a.warmup):
        step(i)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    t0 = time.perf_counter()
    for i in range(a.steps):
        step(i)
    if cuda:
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1000
    else:
        seconds = time.perf_counter() - t0
    tokens = a.steps * v["mb"] * a.seq_len
    tps = tokens / seconds
    peak = device_peak_flops(a.peak_flops)
    return {"variant": v["name"], "attn": attn, "params_M": round(n_params / 1e6, 1), "tokens_per_sec": tps,
            "step_ms": 1000 * seconds / a.steps, "mfu": tps * flops / peak if peak else None,
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def variants_mode(a) -> None:
    rows = []
    for spec in a.variants.split(","):
        v = parse_variant(spec, a.micro_batch)
        if reason := missing_requirement(v):
            rows.append({"variant": spec, "skipped": reason})
            continue
        cmd = [sys.executable, __file__, "--one", spec, "--model", a.model, "--seq-len", str(a.seq_len),
               "--micro-batch", str(a.micro_batch), "--steps", str(a.steps), "--warmup", str(a.warmup)]
        if a.peak_flops:
            cmd += ["--peak-flops", str(a.peak_flops)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        rows.append(json.loads(line[7:]) if line else {"variant": spec, "skipped": "failed: " +
                                                          (proc.stderr.strip().splitlines() or ["?"])[-1][:120]})
    base = next((r["tokens_per_sec"] for r in rows if "tokens_per_sec" in r), None)
    print(f"\nmodel {a.model}, seq_len {a.seq_len}, {a.steps} timed steps after {a.warmup} warm-up, "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}")
    print("| variant | attention | tokens/s | vs first | step ms | MFU | peak mem GB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['variant']} | skipped: {r['skipped']} | | | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "n/a"
        mem = f"{r['peak_mem_gb']:.1f}" if r["peak_mem_gb"] else "n/a"
        print(f"| {r['variant']} | {r['attn']} | {r['tokens_per_sec']:,.0f} | {r['tokens_per_sec'] / base:.2f}x | "
              f"{r['step_ms']:.1f} | {mfu} | {mem} |")


# ---------------------------------------------------------------------------------------------------------------
def bare_loop(a, cfg) -> float:
    """The reference: model, AdamW, the same data and batch, forward/backward/clip/step; nothing else."""
    from torch.utils.data import DataLoader

    from tinyllama.data import DistributedStepSampler, MixtureDataset, parse_mixture
    from tinyllama.model import build_model

    torch.manual_seed(0)
    model = build_model(cfg.model_config, attn_implementation="sdpa", seed=cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    data = MixtureDataset(cfg.data_dir, parse_mixture(cfg.mixture), cfg.seq_len, seed=cfg.seed)
    loader = iter(DataLoader(data, batch_size=cfg.micro_batch_size,
                             sampler=DistributedStepSampler(0, cfg.global_batch_size, 0, 1)))
    accum = cfg.global_batch_size // cfg.micro_batch_size
    times = []
    for _step in range(a.overhead_steps):
        t0 = time.perf_counter()
        for _ in range(accum):
            ids = next(loader)["input_ids"]
            targets = ids[:, 1:].contiguous()
            loss = model(input_ids=ids[:, :-1], labels=targets, shift_labels=targets).loss / accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[a.warmup:])


def recipe_loop(a) -> tuple[float, object]:
    """The recipe, in-process, logging every step; step time from its own tokens/s log rows."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pretrain", REPO / "recipes" / "pretrain.py")  # not a package
    pretrain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pretrain)

    from tinyllama.config import parse_config
    from tinyllama.training.args import DEMO_CONFIG, PretrainArgs

    with tempfile.TemporaryDirectory() as tmp:
        overrides = ["--config", str(DEMO_CONFIG), "--output_dir", tmp, "--max_steps", str(a.overhead_steps),
                     "--log_every", "1", "--eval_every", "0", "--save_every", "1000000", "--export", "false",
                     "--report_to", "[none]", "--seed", "0"]
        pretrain.main(overrides)
        rows = [json.loads(x) for x in (Path(tmp) / "logs" / "metrics.jsonl").read_text().splitlines()]
        (cfg,) = parse_config(PretrainArgs, overrides)
    step_times = [r["global_batch"] * cfg.seq_len / r["tokens_per_sec"] for r in rows if "tokens_per_sec" in r]
    return statistics.median(step_times[a.warmup:]), cfg


def overhead_mode(a) -> None:
    torch.set_num_threads(a.threads or torch.get_num_threads())
    recipe, cfg = recipe_loop(a)  # first: prepares the demo data if needed
    bare = bare_loop(a, cfg)
    recipe2, _ = recipe_loop(a)  # again, so neither side profits from running second
    recipe = min(recipe, recipe2)
    tokens = cfg.global_batch_size * cfg.seq_len
    print(f"\nloop overhead on CPU ({torch.get_num_threads()} threads), demo model, {cfg.global_batch_size} x "
          f"{cfg.seq_len} tokens per step, median of {a.overhead_steps - a.warmup} steps")
    print("| loop | step ms | tokens/s | vs bare |")
    print("|---|---|---|---|")
    print(f"| bare PyTorch | {1000 * bare:.1f} | {tokens / bare:,.0f} | 1.00x |")
    print(f"| recipes/pretrain.py | {1000 * recipe:.1f} | {tokens / recipe:,.0f} | {recipe / bare:.3f}x step time |")
    print(f"\noverhead: {100 * (recipe / bare - 1):+.1f}% (target: at most +10%)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="model config (tinyllama-1.1b on a GPU)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per variant")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--variants", default="sdpa,sdpa+docmask,sdpa+ckpt,sdpa+mb8")
    p.add_argument("--peak-flops", type=float, default=None)
    p.add_argument("--loop-overhead", action="store_true", help="recipe vs bare PyTorch loop (CPU, demo)")
    p.add_argument("--overhead-steps", type=int, default=40)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.one:
        print("RESULT " + json.dumps(run_variant(parse_variant(a.one, a.micro_batch), a)), flush=True)
    elif a.loop_overhead:
        overhead_mode(a)
    else:
        variants_mode(a)


if __name__ == "__main__":
    main()
