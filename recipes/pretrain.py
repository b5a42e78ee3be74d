"""Pretrain (or continue pretraining, or cool down) a TinyLlama-shaped model with Accelerate.

    accelerate launch [--config_file configs/accelerate/<x>.yaml] recipes/pretrain.py --config configs/pretrain/<x>.yaml [--key value ...]

With no ``--config`` it runs the embedded demo (configs/pretrain/demo.yaml) on CPU in a couple of minutes.

The loop is ours, not a Trainer's, so that the data position, batch-size changes and resume stay exact and
visible: the data of step ``s`` is a pure function of (seed, samples consumed before ``s``), the learning rate a
pure function of ``s``, and a checkpoint holds model, optimizer, RNG and those two numbers.

Reading order: parse config -> accelerator -> data -> model -> optimizer -> resume or init -> loop -> save.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tinyllama.config import config_to_dict, parse_config
from tinyllama.data import DistributedStepSampler, MixtureDataset, parse_mixture, prepare_data, validation_dataset
from tinyllama.model import count_parameters, flops_per_token
from tinyllama.tokenizer import save_tokenizer
from tinyllama.training.args import DEMO_CONFIG, PretrainArgs
from tinyllama.training.checkpoint import (TrainState, clean_stale_tmp, export_model,
                                           find_resume_checkpoint, load_checkpoint, point_final, rotate_exports,
                                           save_checkpoint, step_name)
from tinyllama.training.core import (fill_deepspeed_config, forward_loss, is_deepspeed,
                                     make_accelerator, setup_model)
from tinyllama.training.hub import HubUploader, model_card
from tinyllama.training.metrics import MetricsLog, Throughput, device_peak_flops, peak_memory_gb
from tinyllama.training.optim import build_optimizer
from tinyllama.training.schedule import BatchSchedule, LRSchedule
from tinyllama.utils import RunStopped, atomic_write_text, complete_cpu_launch, entry_point, setup_logging

log = logging.getLogger("pretrain")


class StopRequested:
    """SIGTERM/SIGINT (how schedulers preempt): finish the step, save a checkpoint, exit."""

    def __init__(self):
        self.flag = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        self.flag = True


@entry_point
def main(argv: list[str] | None = None) -> dict:
    complete_cpu_launch()  # before anything reads the distributed setup
    argv = list(sys.argv[1:] if argv is None else argv)
    # ---- config ----------------------------------------------------------------------------------------------
    (args,) = parse_config(PretrainArgs, argv, default_config=DEMO_CONFIG)
    run_dir = args.run_dir
    accelerator = make_accelerator(args, project_dir=run_dir)
    setup_logging(main_process=accelerator.is_main_process)
    if "--config" not in argv:
        log.info("no --config given: running the embedded demo (%s) on %s", DEMO_CONFIG.relative_to(Path.cwd())
                 if DEMO_CONFIG.is_relative_to(Path.cwd()) else DEMO_CONFIG, accelerator.device)
    world, rank = accelerator.num_processes, accelerator.process_index
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
    model = setup_model(args)
    if len(tokenizer) > model.config.vocab_size or train_set.vocab_size > model.config.vocab_size:
        raise ValueError(f"tokenizer {args.tokenizer} ({len(tokenizer)} tokens; data prepared with "
                         f"{train_set.vocab_size}) does not fit the model's vocab_size {model.config.vocab_size}")
    n_params = count_parameters(model)
    flops = flops_per_token(model.config, args.seq_len, count_parameters(model, exclude_input_embedding=True))
    if not is_deepspeed(accelerator):
        model = model.to(accelerator.device)  # before the optimizer, so fused AdamW sees device tensors
    optimizer = build_optimizer(model, args)
    lr_at = LRSchedule.from_args(args)

    def grad_accum_at(step: int) -> int:
        return batches.batch_at(step) // (args.micro_batch_size * world)

    fill_deepspeed_config(accelerator, args, grad_accum_at(0))
    if args.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)

    # ---- resume this run, or start from other weights ----------------------------------------------------------
    ckpt_root, export_root = run_dir / "checkpoints", run_dir / "export"
    if accelerator.is_main_process:
        clean_stale_tmp(ckpt_root)
        clean_stale_tmp(export_root)
    state = TrainState()
    resume_from = find_resume_checkpoint(args.resume, ckpt_root)
    if resume_from is not None:
        state = load_checkpoint(accelerator, resume_from)
        log.info("resumed from %s: step %d, %d samples, %d tokens", resume_from, state.step, state.samples,
                 state.tokens)
    elif args.init_from:
        if args.init_optimizer:  # same topology as the source run: model, optimizer and RNG state come along
            accelerator.load_state(args.init_from)
            for group in optimizer.param_groups:  # this stage's weight decay, not the previous stage's
                if group["weight_decay"] > 0:  # (a no-decay group stays at 0)
                    group["weight_decay"] = args.weight_decay
        log.info("initialised from %s (%s optimizer)", args.init_from,
                 "its" if args.init_optimizer else "a fresh")
    resolved = config_to_dict(args)  # (never holds the Hub token)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", _yaml(resolved))
    accelerator.init_trackers(args.run_name, config={k: v for k, v in resolved.items()
                                                     if isinstance(v, (int, float, str, bool))})
    metrics = MetricsLog(accelerator, run_dir / "logs")
    uploader = HubUploader(args.hub_model_id, args.hub_private, args.hub_revision, args.hub_upload_retries) \
        if args.push_to_hub and accelerator.is_main_process else None

    def metadata() -> dict:
        return {"step": state.step, "tokens_seen": state.tokens, "samples": state.samples, "stage": args.stage,
                "run_name": args.run_name, "mixture": args.mixture, "init_from": args.init_from}

    def checkpoint(final: bool = False) -> None:
        path = save_checkpoint(accelerator, ckpt_root, state, accelerator.unwrap_model(model).config,
                               args.keep_last)
        if accelerator.is_main_process:
            save_tokenizer(tokenizer, path / "tokenizer")  # with its tokenizer.model
        if args.export or final:
            out = export_model(accelerator, model, tokenizer, export_root / step_name(state.step), metadata(),
                               model_card(args, metadata(), n_params))
            if accelerator.is_main_process:
                if final:
                    point_final(export_root, out)
                if uploader:
                    uploader.submit(out, f"step {state.step}: {state.tokens:,} tokens")
                if args.eval_suite:
                    evaluate_export(out)
                rotate_exports(export_root, args.keep_last, protect=uploader.pending if uploader else set())
        accelerator.wait_for_everyone()

    def evaluate_export(out: Path) -> None:
        """lm-eval on the export, logged beside the loss. Blocking (the other ranks wait at the next barrier): for
        long suites on big runs, run evaluation/run_lm_eval.sh on the exports as a separate job instead."""
        from tinyllama.evaluation import run_suite

        try:
            results = run_suite(out, args.eval_suite, run_dir / "eval", limit=args.eval_limit,
                                data_dir=os.environ.get("EVAL_DATA_DIR") or None)
        except Exception as e:  # an evaluation problem is reported, it never stops training
            log.error("eval_suite %s on %s failed: %s", args.eval_suite, out.name, e)
            return
        metrics.log({f"eval/{task}/{metric}": value for task, m in results.items() for metric, value in m.items()
                     if isinstance(value, (int, float))}, state.step)

    if args.export_initial and state.step == 0:  # the weights this run starts from, before any update
        export_model(accelerator, model, tokenizer, export_root / "initial", metadata())

    # ---- the loop ----------------------------------------------------------------------------------------------
    def loader_from(step: int):
        sampler = DistributedStepSampler(state.samples, batches.batch_at(step), rank, world)
        return iter(DataLoader(train_set, batch_size=args.micro_batch_size, sampler=sampler,
                               num_workers=args.num_workers, pin_memory=torch.cuda.is_available()))

    log.info("model %.2fM parameters, %s; %d processes; global batch %d x %d tokens; %d steps from step %d",
             n_params / 1e6, accelerator.unwrap_model(model).config._attn_implementation, world,
             batches.batch_at(state.step), args.seq_len, args.max_steps, state.step)
    throughput = Throughput(flops, world, device_peak_flops(args.peak_flops))
    batches_iter, current_batch = None, None
    loss_sum, loss_count, last_loss = torch.zeros((), device=accelerator.device), 0, float("nan")
    source_counts = torch.zeros(len(train_set.source_names))  # samples read, by source (on the host: no copy per
    #                                                            micro-batch; moved to the device at log steps)
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
        accelerator.step = 0  # micro-step counter of accumulate(): sync on the last micro-batch of this step
        nonfinite = torch.zeros((), device=accelerator.device)
        step_loss = torch.zeros((), device=accelerator.device)
        skipped, grad_norm = False, None
        for micro in range(accum):
            batch = next(batches_iter)
            source_counts += torch.bincount(batch["source"], minlength=len(source_counts))
            if skipped:
                continue  # the rest of a skipped step: its data is consumed, not trained on
            with accelerator.accumulate(model):
                loss = forward_loss(model, batch, args.document_masking, accelerator.device)
                loss = _inject_nonfinite(loss, step)
                nonfinite += ~torch.isfinite(loss.detach())
                if micro == accum - 1 and is_deepspeed(accelerator):
                    # DeepSpeed steps inside the last backward: decide before it (one sync per step)
                    skipped = accelerator.reduce(nonfinite, "sum").item() > 0
                    if skipped:
                        model.optimizer.zero_grad()
                        continue
                accelerator.backward(loss)
                step_loss += loss.detach() / accum
        if is_deepspeed(accelerator):
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm) if not skipped else None
            skipped = skipped or grad_norm is None or not math.isfinite(float(grad_norm))
        else:
            skipped = accelerator.reduce(nonfinite, "sum").item() > 0
            if not skipped:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm or float("inf"))
                skipped = not torch.isfinite(grad_norm).item()
            if not skipped:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        state.step += 1
        state.samples += current_batch
        state.tokens += current_batch * args.seq_len
        throughput.update(current_batch * args.seq_len)
        if skipped:
            state.skipped_steps += 1
            state.consecutive_nonfinite += 1
            log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row, %d in all)", step,
                        state.consecutive_nonfinite, state.skipped_steps)
            if state.consecutive_nonfinite >= args.max_nonfinite_steps:
                raise RunStopped(
                    f"{state.consecutive_nonfinite} consecutive steps had a non-finite loss or gradient (step "
                    f"{step}); stopping. The last good checkpoint is in {ckpt_root}; lower the learning rate or "
                    "check the data, then resume")
        else:
            state.consecutive_nonfinite = 0
            loss_sum += step_loss
            loss_count += 1
        bar.update(1)

        # ---- logging, validation, checkpoints (every rank takes part; only the main process writes) ----------
        if state.step % args.log_every == 0 or state.step == args.max_steps:
            total = accelerator.reduce(torch.cat([torch.stack([loss_sum, torch.tensor(float(loss_count),
                                                                                      device=loss_sum.device)]),
                                                  source_counts.to(loss_sum.device)]), "sum")
            row = {"lr": lr, "tokens_seen": state.tokens, "global_batch": current_batch,
                   "skipped_steps": state.skipped_steps, **throughput.read()}
            if total[1] > 0:  # (an interval of only skipped steps has no loss to show)
                last_loss = (total[0] / total[1]).item()
                row["loss"] = last_loss
            if grad_norm is not None and not skipped:
                row["grad_norm"] = float(grad_norm)
            if (mem := peak_memory_gb()) is not None:
                row["peak_memory_gb"] = mem
            read = total[2:]  # the sources of the samples actually read since the last log line, all ranks
            for name, c in zip(train_set.source_names, read.tolist()):
                row[f"mix/{name}"] = c / max(read.sum().item(), 1.0)
            if uploader:
                row.update(uploader.stats())
            metrics.log(row, state.step)
            bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{row['tokens_per_sec']:.0f}")
            loss_sum.zero_()
            source_counts.zero_()
            loss_count = 0
        if val_set is not None and args.eval_every and state.step % args.eval_every == 0:
            metrics.log({"val_loss": validate(model, val_set, args, accelerator)}, state.step)
        _inject_preemption(state.step)
        stop_now = accelerator.reduce(torch.tensor(float(stop.flag), device=accelerator.device), "sum").item() > 0
        if state.step % args.save_every == 0 or state.step == args.max_steps or stop_now:
            checkpoint(final=state.step == args.max_steps)
        if stop_now:
            log.warning("stop requested (SIGTERM): checkpoint at step %d saved, exiting; resume with --resume auto",
                        state.step)
            break
    bar.close()

    # ---- end: uploads finish (bounded), trackers close --------------------------------------------------------
    summary = {"step": state.step, "tokens": state.tokens, "final_loss": last_loss,
               "skipped_steps": state.skipped_steps, "run_dir": str(run_dir)}
    if uploader:
        uploader.close()
        summary.update(uploader.stats())
    if accelerator.is_main_process:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    accelerator.end_training()
    return summary


@torch.no_grad()
def validate(model, val_set, args, accelerator) -> float:
    """Mean loss over the same held-out micro-batches every time (each rank takes its own slice)."""
    model.eval()
    n = min(len(val_set), args.eval_batches * args.micro_batch_size * accelerator.num_processes)
    indices = list(range(accelerator.process_index, n, accelerator.num_processes))
    total = torch.zeros(2, device=accelerator.device)
    for i in range(0, len(indices), args.micro_batch_size):
        batch = torch.utils.data.default_collate([val_set[j] for j in indices[i:i + args.micro_batch_size]])
        loss = forward_loss(model, batch, args.document_masking, accelerator.device)
        total += torch.stack([loss.float() * len(batch["input_ids"]), torch.tensor(float(len(batch["input_ids"])),
                                                                                     device=total.device)])
    total = accelerator.reduce(total, "sum")
    model.train()
    return (total[0] / total[1].clamp(min=1)).item()


def _inject_nonfinite(loss: torch.Tensor, step: int) -> torch.Tensor:
    """Fault injection for the tests: TINYLLAMA_FAULT_NAN_STEPS=3,4 makes those steps' loss NaN."""
    steps = os.environ.get("TINYLLAMA_FAULT_NAN_STEPS")
    if steps and str(step) in steps.split(","):
        return loss * float("nan")
    return loss


def _inject_preemption(step: int) -> None:
    """Fault injection for the tests: TINYLLAMA_FAULT_SIGTERM_AT_STEP=N sends this process SIGTERM after step N."""
    if os.environ.get("TINYLLAMA_FAULT_SIGTERM_AT_STEP") == str(step):
        os.kill(os.getpid(), signal.SIGTERM)


def _yaml(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)


if __name__ == "__main__":
    main()
