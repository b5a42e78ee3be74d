"""Everything the pretraining recipe does at a checkpoint step, in one object: the training state (for resume),
the model folder (export, ``export/final``), the background Hub upload, then the hooks the recipe passes for each
export (``on_export``: callables ``(export folder, step) -> metrics to log``; the lm-eval suite on the export is one,
``tinyllama.evaluation.export_hook``; training never imports evaluation).

Every rank calls ``save``; only the main process writes exports, uploads and evaluates (the others wait at the
barrier that ends ``save``). The layout is described in :mod:`tinyllama.checkpoints`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

from ..tokenizer import save_tokenizer
from ..checkpoints import (ResumeSource, TrainState, clean_stale_tmp, export_model, load_checkpoint, point_final,
                         rotate_exports, save_checkpoint, step_name)
from .hub import HubUploader, model_card

log = logging.getLogger(__name__)


def distillation_metadata(a) -> dict:
    """The teacher and the loss's settings, in every export of a distilled run (nothing for a plain run)."""
    if not getattr(a, "teacher", None):
        return {}
    return {"teacher": a.teacher, "distillation": {"alpha": a.distill_alpha, "temperature": a.distill_temperature,
                                                  "top_k": a.distill_top_k}}


class Checkpointer:
    def __init__(self, accelerator, args, model, tokenizer, run_dir: Path, n_params: int, metrics,
                 on_export: Sequence[Callable[[Path, int], dict]] = ()):
        self.accelerator, self.args, self.model, self.tokenizer = accelerator, args, model, tokenizer
        self.n_params, self.metrics, self.on_export = n_params, metrics, list(on_export)
        self.ckpt_root, self.export_root = Path(run_dir) / "checkpoints", Path(run_dir) / "export"
        main = accelerator.is_main_process
        if main:  # leftovers of a killed write; before any rank writes a new one
            clean_stale_tmp(self.ckpt_root)
            clean_stale_tmp(self.export_root)
        self.uploader = HubUploader(args.hub_model_id, args.hub_private, args.hub_revision, args.hub_upload_retries,
                                    args.hub_retry_backoff, args.hub_wait_timeout) if args.push_to_hub and main else None

    def resume_or_init(self, resume_from: ResumeSource | None) -> TrainState:
        """The state of the checkpoint ``resume_from`` (``checkpoint.resume_source``: this run's newest, decided at
        start-up), or a fresh one; with ``init_from`` a checkpoint folder and ``init_optimizer``, that run's model,
        optimizer and RNG come along (the model weights of any other ``init_from`` were loaded when the model was
        built)."""
        args, accelerator = self.args, self.accelerator
        if resume_from is not None:
            state = load_checkpoint(accelerator, resume_from)
            log.info("resumed from %s%s: step %d, %d samples, %d tokens", resume_from.folder,
                     " (its DeepSpeed universal checkpoint)" if resume_from.universal else "", state.step,
                     state.samples, state.tokens)
            return state
        if args.init_from:
            if args.init_optimizer:  # same topology as the source run: model, optimizer and RNG state come along
                accelerator.load_state(args.init_from)
                for optimizer in accelerator._optimizers:  # this stage's weight decay, not the previous stage's
                    for group in optimizer.param_groups:
                        if group["weight_decay"] > 0:  # (a no-decay group stays at 0)
                            group["weight_decay"] = args.weight_decay
            log.info("initialised from %s (%s optimizer)", args.init_from, "its" if args.init_optimizer else "a fresh")
        return TrainState()

    def metadata(self, state: TrainState) -> dict:
        a = self.args
        # data_dir (absolute) with the mixture: evaluation/report.py reads the sources' decontamination counts;
        # lr_step_offset + step: where this model's learning-rate schedule stopped ('lr_step_offset: continue')
        return {"step": state.step, "tokens_seen": state.tokens, "samples": state.samples, "stage": a.stage,
                "run_name": a.run_name, "mixture": a.mixture, "data_dir": str(Path(a.data_dir).resolve()),
                "init_from": a.init_from, "lr_step_offset": a.lr_step_offset, **distillation_metadata(a)}

    def export_initial(self, state: TrainState) -> None:
        """The weights this run starts from, before any update (to check what init_from loaded)."""
        export_model(self.accelerator, self.model, self.tokenizer, self.export_root / "initial", self.metadata(state))

    def save(self, state: TrainState, final: bool = False) -> None:
        accelerator, args = self.accelerator, self.args
        path = save_checkpoint(accelerator, self.ckpt_root, state, accelerator.unwrap_model(self.model).config,
                               args.keep_last)
        if accelerator.is_main_process:
            save_tokenizer(self.tokenizer, path / "tokenizer")  # with its tokenizer.model
        if args.export or final:
            meta = self.metadata(state)
            out = export_model(accelerator, self.model, self.tokenizer, self.export_root / step_name(state.step),
                               meta, model_card(args, meta, self.n_params))
            if accelerator.is_main_process:
                if final:
                    point_final(self.export_root, out)
                if self.uploader:
                    self.uploader.submit(out, f"step {state.step}: {state.tokens:,} tokens")
                for hook in self.on_export:  # blocking: the other ranks wait at the barrier below
                    logged = hook(out, state.step)
                    if logged:
                        self.metrics.log(logged, state.step)
                rotate_exports(self.export_root, args.keep_last,
                               protect=self.uploader.pending if self.uploader else set())
        accelerator.wait_for_everyone()

    def close(self) -> dict:
        """Let queued uploads finish (bounded); their counts for the summary."""
        if not self.uploader:
            return {}
        self.uploader.close()
        return self.uploader.stats()

    def stats(self) -> dict:
        return self.uploader.stats() if self.uploader else {}
