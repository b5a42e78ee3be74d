"""Pretrain (or continue pretraining, or cool down) a TinyLlama-shaped model with Accelerate.

    accelerate launch [--config_file configs/accelerate/<x>.yaml] recipes/pretrain.py --config configs/pretrain/<x>.yaml [--key value ...]

With no ``--config`` it runs the embedded demo (configs/pretrain/demo.yaml) on CPU in a couple of minutes.

The loop is ours, not a Trainer's, so that the data position, batch-size changes and resume stay exact and
visible: the data of step ``s`` is a pure function of (seed, samples consumed before ``s``), the learning rate a
pure function of ``s``, and a checkpoint holds model, optimizer, RNG and those two numbers.

Reading order: parse config -> accelerator -> data -> model -> optimizer -> resume or init -> loop -> save.
One optimizer step (micro-batches, DeepSpeed's split, the non-finite skip) is ``train_step`` in
tinyllama/training/core.py; what a checkpoint step does (state, export, upload, eval) is ``Checkpointer``.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tinyllama import environment
from tinyllama.checkpoints import accelerator_format, resume_source
from tinyllama.config import config_to_dict, parse_config
from tinyllama.data import DistributedStepSampler, MixtureDataset, parse_mixture, prepare_data, validation_dataset
from tinyllama.model import count_parameters, flops_per_token
from tinyllama.training.args import DEMO_CONFIG, PretrainArgs, require_resolved, require_same_run
from tinyllama.evaluation import export_hook
from tinyllama.training.checkpointer import Checkpointer
from tinyllama.training.core import (fill_deepspeed_config, forward_loss, is_deepspeed, make_accelerator,
                                     setup_model, train_step)
from tinyllama.training.distill import (Distiller, check_teacher, forward_flops_per_token, load_teacher,
                                        prepare_teacher)
from tinyllama.training.metrics import MetricsLog, Throughput, device_peak_flops, peak_memory_gb
from tinyllama.training.optim import build_optimizer
from tinyllama.training.schedule import BatchSchedule, LRSchedule
from tinyllama.utils import RunStopped, atomic_write_text, complete_cpu_launch, entry_point, setup_logging

log = logging.getLogger("pretrain")


class StopRequested:
    """SIGTERM/SIGUSR1 (how schedulers preempt; Slurm's pre-timeout signal): finish the step, save a checkpoint,
    exit."""

    def __init__(self):
        self.flag, self.name = False, None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        self.flag, self.name = True, signal.Signals(signum).name


@entry_point
def main(argv: list[str] | None = None) -> dict:
    complete_cpu_launch()  # before anything reads the distributed setup
    argv = list(sys.argv[1:] if argv is None else argv)
    # ---- config (every problem reported at once, before any work) ------------------------------------------
    (args,) = parse_config(PretrainArgs, argv, default_config=DEMO_CONFIG)
    require_resolved(args)  # lr_step_offset: continue -> a number, the same one on resume
    require_same_run(args)  # a resume continues its run: the global batch, data, optimizer, schedule unchanged
    check_teacher(args)  # a teacher exists and has the student's vocabulary (configs and tokenizers only)
    args.eval_data_dir = args.eval_data_dir or environment.eval_data_dir()  # the one env override
    run_dir = args.run_dir
    accelerator = make_accelerator(args, project_dir=run_dir)
    setup_logging(main_process=accelerator.is_main_process)
    if "--config" not in argv:
        log.info("no --config given: running the embedded demo (%s) on %s", DEMO_CONFIG.relative_to(Path.cwd())
                 if DEMO_CONFIG.is_relative_to(Path.cwd()) else DEMO_CONFIG, accelerator.device)
    world, rank = accelerator.num_processes, accelerator.process_index
    # what a resume reads: the same or (DDP, FSDP) any number of processes, DeepSpeed's universal conversion on
    # another number, or one message before any work
    resume_from = resume_source(args.resume, run_dir / "checkpoints", accelerator_format(accelerator), world)
    batches = BatchSchedule.from_args(args)
    stop = StopRequested()

    # ---- data (prepared on the main process first when the config says how) ----------------------------------
    if args.prepare_config and accelerator.is_main_process:
        prepare_data(["--config", args.prepare_config])
    accelerator.wait_for_everyone()
    mixture = parse_mixture(args.mixture)
    train_set = MixtureDataset(args.data_dir, mixture, seq_len=args.seq_len, seed=args.seed, split="train")
    val_set = validation_dataset(args.data_dir, [m.name for m in mixture], seq_len=args.seq_len) \
        if args.eval_every else None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, trust_remote_code=args.trust_remote_code)

    # ---- model and optimizer ---------------------------------------------------------------------------------
    model = setup_model(args, accelerator)  # fresh (TinyLlama's init) or from init_from's weights; ZeRO-3 partitioned
    #                                       while built only with zero3_init_flag
    if len(tokenizer) > model.config.vocab_size or train_set.vocab_size > model.config.vocab_size:
        raise ValueError(f"tokenizer {args.tokenizer} ({len(tokenizer)} tokens; data prepared with "
                         f"{train_set.vocab_size}) does not fit the model's vocab_size {model.config.vocab_size}")
    n_params = count_parameters(model)
    flops = flops_per_token(model.config, args.seq_len, count_parameters(model, exclude_input_embedding=True))
    teacher, teacher_flops = None, 0.0
    if args.teacher:  # its weights now; placed or partitioned for the engine after the student's prepare
        teacher = load_teacher(args, accelerator)
        teacher_flops = forward_flops_per_token(teacher.config, args.seq_len,
                                                count_parameters(teacher, exclude_input_embedding=True))
    if not is_deepspeed(accelerator):
        model = model.to(accelerator.device)  # before the optimizer, so fused AdamW sees device tensors
    optimizer = build_optimizer(model, args)
    lr_at = LRSchedule.from_args(args)

    def grad_accum_at(step: int) -> int:
        return batches.batch_at(step) // (args.micro_batch_size * world)

    fill_deepspeed_config(accelerator, args, grad_accum_at(0),  # before prepare, which reads it
                          load_universal=resume_from is not None and resume_from.universal)
    if args.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    distiller = None
    if teacher is not None:
        n_teacher = count_parameters(teacher)
        distiller = Distiller(prepare_teacher(teacher, accelerator), args.distill_alpha, args.distill_temperature,
                              args.distill_top_k)

    # ---- resume this run, or start from other weights (after prepare: the state is loaded into its wrappers) ----
    metrics = MetricsLog(accelerator, run_dir / "logs")
    # each export is evaluated by the suite (blocking; for long suites on big runs, run evaluation/run_lm_eval.sh on
    # the exports as a separate job instead)
    on_export = [export_hook(args.eval_suite, run_dir / "eval", limit=args.eval_limit,
                             data_dir=args.eval_data_dir)] if args.eval_suite else []
    checkpointer = Checkpointer(accelerator, args, model, tokenizer, run_dir, n_params, metrics, on_export)
    state = checkpointer.resume_or_init(resume_from)
    resolved = config_to_dict(args)  # (never holds the Hub token)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", _yaml(resolved))
    accelerator.init_trackers(args.run_name, config={k: v for k, v in resolved.items()
                                                     if isinstance(v, (int, float, str, bool))})
    if args.export_initial and state.step == 0:
        checkpointer.export_initial(state)

    # ---- the loop ----------------------------------------------------------------------------------------------
    def loader_from(step: int):  # the data of step `step` onward: a pure function of (seed, samples consumed)
        sampler = DistributedStepSampler(state.samples, batches.batch_at(step), rank, world)
        return iter(DataLoader(train_set, batch_size=args.micro_batch_size, sampler=sampler,
                               num_workers=args.num_workers, pin_memory=torch.cuda.is_available()))

    log.info("model %.2fM parameters, %s; %d processes; global batch %d x %d tokens; %d steps from step %d",
             n_params / 1e6, accelerator.unwrap_model(model).config._attn_implementation, world,
             batches.batch_at(state.step), args.seq_len, args.max_steps, state.step)
    if distiller is not None:
        log.info("teacher %s: %.2fM parameters, %s; loss = %.3g x CE + %.3g x T^2 x KL at T = %g, %s", args.teacher,
                 n_teacher / 1e6, teacher_flops_note(teacher_flops, flops), 1 - args.distill_alpha,
                 args.distill_alpha, args.distill_temperature,
                 f"top {args.distill_top_k} tokens + the rest" if args.distill_top_k else "whole vocabulary")
    throughput = Throughput(flops, world, device_peak_flops(args.peak_flops), teacher_flops)
    interval = Interval(accelerator, train_set.source_names, throughput, distilling=distiller is not None)
    interval.restore(state.log_window)  # a resumed run's first log line averages the same steps as an uninterrupted one
    batches_iter, current_batch = None, None
    bar = tqdm(total=args.max_steps, initial=state.step, desc="pretrain", disable=not accelerator.is_main_process,
               dynamic_ncols=True)
    model.train()
    while state.step < args.max_steps:
        step = state.step
        if batches.batch_at(step) != current_batch:  # start, resume, or a batch-size change: same data position
            current_batch, accum = batches.batch_at(step), grad_accum_at(step)
            batches_iter = loader_from(step)
            accelerator.gradient_accumulation_steps = accum
            if is_deepspeed(accelerator):
                model.set_train_batch_size(current_batch)
        lr = lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        result = train_step(model, optimizer, accelerator, batches_iter, accum, args.document_masking,
                            args.max_grad_norm, interval.source_counts, distiller=distiller)
        state.step += 1
        state.samples += current_batch
        state.tokens += current_batch * args.seq_len
        interval.add(result, current_batch * args.seq_len)
        if result.skipped:
            state.skipped_steps += 1
            state.consecutive_nonfinite += 1
            log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row, %d in all)", step,
                        state.consecutive_nonfinite, state.skipped_steps)
            if state.consecutive_nonfinite >= args.max_nonfinite_steps:
                raise RunStopped(
                    f"{state.consecutive_nonfinite} consecutive steps had a non-finite loss or gradient (step "
                    f"{step}); stopping. The last good checkpoint is in {checkpointer.ckpt_root}; lower the "
                    "learning rate or check the data, then resume")
        else:
            state.consecutive_nonfinite = 0
        bar.update(1)

        # ---- logging, validation, checkpoints (every rank takes part; only the main process writes) ----------
        if state.step % args.log_every == 0 or state.step == args.max_steps:
            row = interval.read(lr=lr, tokens_seen=state.tokens, global_batch=current_batch,
                                skipped_steps=state.skipped_steps, **checkpointer.stats())
            metrics.log(row, state.step)
            parts = {k: f"{row[f'loss_{k}']:.3f}" for k in ("ce", "kl") if f"loss_{k}" in row}
            bar.set_postfix(loss=f"{interval.last_loss:.3f}", **parts, lr=f"{lr:.2e}",
                            tok_s=f"{row['tokens_per_sec']:.0f}")
        if val_set is not None and args.eval_every and state.step % args.eval_every == 0:
            metrics.log({"val_loss": validate(model, val_set, args, accelerator)}, state.step)
        stop_now = accelerator.reduce(torch.tensor(float(stop.flag), device=accelerator.device), "sum").item() > 0
        if state.step % args.save_every == 0 or state.step == args.max_steps or stop_now:
            state.log_window = interval.snapshot()
            started = time.perf_counter()
            checkpointer.save(state, final=state.step == args.max_steps)
            # how long training stood still for it (state, export, upload hand-off, eval): docs/benchmarks.md
            metrics.log({"checkpoint_seconds": time.perf_counter() - started}, state.step)
        if stop_now:
            log.warning("stop requested (%s): checkpoint at step %d saved, exiting; resume with --resume auto",
                        stop.name or "on another rank", state.step)
            break
    bar.close()

    # ---- end: uploads finish (bounded), trackers close --------------------------------------------------------
    summary = {"step": state.step, "tokens": state.tokens, "final_loss": interval.last_loss,
               "skipped_steps": state.skipped_steps, "run_dir": str(run_dir), **checkpointer.close()}
    if accelerator.is_main_process:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    accelerator.end_training()
    return summary


class Interval:
    """The metrics of the steps since the last log line, summed over ranks at log time only (one all-reduce).

    The window is the same sums on every layout: a float64 sum of micro-batch losses and their count, and the samples
    read by source. A checkpoint carries the window's global sums (``snapshot``), which one rank takes back on resume
    (``restore``), so a log line whose window straddles a resume, even on another number of processes, shows the
    numbers of an uninterrupted run."""

    def __init__(self, accelerator, source_names: list[str], throughput, distilling: bool = False):
        self.accelerator, self.source_names, self.throughput = accelerator, source_names, throughput
        self.loss_sum = torch.zeros((), device=accelerator.device, dtype=torch.float64)
        # with a teacher: the sums of the loss's two parts, CE and KL (the window's last two numbers)
        self.parts_sum = torch.zeros(2 if distilling else 0, device=accelerator.device, dtype=torch.float64)
        self.loss_count = 0  # micro-batches in loss_sum
        self.source_counts = torch.zeros(len(source_names), dtype=torch.float64)  # samples read, by source (on the
        #                                 host: no copy per micro-batch; moved to the device at log steps)
        self.grad_norm, self.last_loss = None, float("nan")

    def add(self, result, tokens: int) -> None:
        self.throughput.update(tokens)
        self.grad_norm = None if result.skipped else result.grad_norm
        if not result.skipped:
            self.loss_sum += result.loss_sum
            self.loss_count += result.micro_batches
            if result.parts_sum is not None:
                self.parts_sum += result.parts_sum

    def _reduce_and_reset(self) -> torch.Tensor:
        device = self.loss_sum.device
        total = self.accelerator.reduce(torch.cat([
            torch.stack([self.loss_sum, torch.tensor(float(self.loss_count), device=device, dtype=torch.float64)]),
            self.source_counts.to(device), self.parts_sum]), "sum")
        self.loss_sum.zero_()
        self.parts_sum.zero_()
        self.source_counts.zero_()
        self.loss_count = 0
        return total

    def snapshot(self) -> list[float]:
        """The open window's global sums (every rank calls this; the window then lives on rank 0 alone)."""
        total = self._reduce_and_reset().tolist()
        if self.accelerator.is_main_process:
            self.restore(total)
        return total

    def restore(self, window: list[float] | None) -> None:
        """Take back a checkpoint's window: on the main process only (the read at log time sums over ranks)."""
        if window and self.accelerator.is_main_process:
            n, parts = len(self.source_names), len(self.parts_sum)
            if len(window) != 2 + n + parts:
                raise ValueError(f"the checkpoint's log window has {len(window) - 2} numbers for sources and loss "
                                 f"parts, this run {n + parts} ({n} sources" + (", CE and KL)" if parts else ")"))
            self.loss_sum += window[0]
            self.loss_count += int(window[1])
            self.source_counts += torch.tensor(window[2:2 + n], dtype=torch.float64)
            self.parts_sum += torch.tensor(window[2 + n:], dtype=torch.float64, device=self.parts_sum.device)

    def read(self, **fields) -> dict:
        total = self._reduce_and_reset()
        row = {**fields, **self.throughput.read()}
        if total[1] > 0:  # (an interval of only skipped steps has no loss to show)
            self.last_loss = (total[0] / total[1]).item()
            row["loss"] = self.last_loss
            if len(self.parts_sum):  # the total's two parts, each a mean over the same micro-batches
                n = len(self.source_names)
                row["loss_ce"] = (total[2 + n] / total[1]).item()
                row["loss_kl"] = (total[3 + n] / total[1]).item()
        if self.grad_norm is not None:
            row["grad_norm"] = float(self.grad_norm)
        if (mem := peak_memory_gb()) is not None:  # this interval's peak (reset below), not the run's so far
            row["peak_memory_gb"] = mem
            torch.cuda.reset_peak_memory_stats()
        # the sources of the samples actually read since the last log line, all ranks
        read = total[2:2 + len(self.source_names)]
        for name, c in zip(self.source_names, read.tolist()):
            row[f"mix/{name}"] = c / max(read.sum().item(), 1.0)
        return row


@torch.no_grad()
def validate(model, val_set, args, accelerator) -> float:
    """Mean loss over the same held-out micro-batches every time, whatever the number of processes: micro-batch j
    holds samples [j*m, (j+1)*m) and rank r takes j = r, r + world, ...; the sum is float64 (exact), so the value
    does not depend on how the micro-batches were spread over ranks (a resume on another world size logs the same
    val_loss). Every rank runs the same number of forwards (ZeRO-3 gathers weights in each one): a rank with no
    micro-batch left repeats the first with weight 0."""
    model.eval()
    m, world, rank = args.micro_batch_size, accelerator.num_processes, accelerator.process_index
    n_batches = min(args.eval_batches, len(val_set) // m)
    total = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
    for i in range(-(-n_batches // world)):
        j = i * world + rank
        real = j < n_batches
        batch = torch.utils.data.default_collate([val_set[k] for k in range((j if real else 0) * m,
                                                                            ((j if real else 0) + 1) * m)])
        loss = forward_loss(model, batch, args.document_masking, accelerator.device)
        total += float(real) * torch.stack([loss.detach().double(), torch.ones((), device=total.device,
                                                                              dtype=torch.float64)])
    total = accelerator.reduce(total, "sum")
    model.train()
    return (total[0] / total[1].clamp(min=1)).item()


def teacher_flops_note(teacher_flops: float, student_flops: float) -> str:
    return (f"its forward {teacher_flops / 1e9:.3g} GFLOP per token = {teacher_flops / student_flops:.2f}x the "
            "student's training step (logged as mfu_with_teacher beside mfu where the peak is known)")


def _yaml(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)


if __name__ == "__main__":
    main()
