"""Hub uploads in the background, and the model card written into every export.

Training never waits for the Hub and never dies because of it: exports are queued to one worker thread that
uploads with ``huggingface_hub``'s ``upload_folder`` (one commit per export), retries with backoff, and reports a
failure in the log and the metrics instead of raising. The token comes from the environment (``HF_TOKEN``) or the
local login, never from a config file, so it is never written to a log, a saved config or a model card.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

from .. import environment

log = logging.getLogger(__name__)


class HubUploader:
    def __init__(self, repo_id: str, private: bool = False, revision: str | None = None, retries: int = 5,
                 backoff: float = 2.0, wait_timeout: float = 600.0):
        from huggingface_hub import HfApi

        self.api = HfApi(endpoint=environment.hub_endpoint())
        self.repo_id, self.private, self.revision = repo_id, private, revision
        self.retries, self.backoff, self.wait_timeout = retries, backoff, wait_timeout
        self.uploaded: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self.attempts = 0
        self.pending: set[Path] = set()
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._repo_ready = False
        self._thread = threading.Thread(target=self._run, name="hub-uploader", daemon=True)
        self._thread.start()

    def submit(self, folder: Path, message: str) -> None:
        folder = Path(folder).resolve()
        with self._lock:
            self.pending.add(folder)
        self._queue.put((folder, message))

    def _upload(self, folder: Path, message: str) -> None:
        if not self._repo_ready:
            self.api.create_repo(self.repo_id, private=self.private, exist_ok=True)
            if self.revision:
                self.api.create_branch(self.repo_id, branch=self.revision, exist_ok=True)
            self._repo_ready = True
        self.api.upload_folder(repo_id=self.repo_id, folder_path=str(folder), revision=self.revision,
                               commit_message=message)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            folder, message = item
            for attempt in range(1, self.retries + 1):
                self.attempts += 1
                try:
                    self._upload(folder, message)
                    self.uploaded.append(folder.name)
                    log.info("hub: uploaded %s to %s (%s)", folder.name, self.repo_id, message)
                    break
                except Exception as e:  # any failure of the Hub is reported, never raised into training
                    err = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                    if attempt == self.retries:
                        self.failed.append((folder.name, err))
                        log.error("hub: upload of %s failed after %d attempts (%s); training goes on, the export "
                                  "stays on disk", folder.name, attempt, err)
                    else:
                        delay = self.backoff * 2 ** (attempt - 1)
                        log.warning("hub: upload of %s failed (attempt %d/%d: %s); retrying in %.0fs",
                                    folder.name, attempt, self.retries, err, delay)
                        time.sleep(delay)
            with self._lock:
                self.pending.discard(folder)
            self._queue.task_done()

    def close(self, timeout: float | None = None) -> bool:
        """Wait (bounded) for queued uploads; True when all finished. A hung Hub cannot hold the run forever.
        The bound: ``timeout``, else the uploader's ``wait_timeout`` (seconds; the run's ``hub_wait_timeout``)."""
        if timeout is None:
            timeout = self.wait_timeout
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("hub: uploads still running after %.0fs; giving up on %s", timeout,
                      sorted(p.name for p in self.pending))
            return False
        return True

    def stats(self) -> dict:
        with self._lock:
            pending = len(self.pending)
        return {"hub_uploaded": len(self.uploaded), "hub_failed": len(self.failed), "hub_attempts": self.attempts,
                "hub_pending": pending}


def model_card(args, metadata: dict, n_params: int, eval_results: dict | None = None) -> str:
    """README.md of an export: architecture, data mixture, tokens seen, hyperparameters, eval results."""
    mixture = "\n".join(f"| {name} | {spec} |" for name, spec in args.mixture.items())
    hp = {
        "learning_rate": args.learning_rate, "min_lr": args.min_lr, "lr_schedule": args.lr_schedule,
        "warmup_steps": args.warmup_steps, "max_steps": args.max_steps, "global_batch_size": args.global_batch_size,
        "seq_len": args.seq_len, "weight_decay": args.weight_decay, "betas": (args.adam_beta1, args.adam_beta2),
        "max_grad_norm": args.max_grad_norm, "mixed_precision": args.mixed_precision, "seed": args.seed,
    }
    distilled = ""
    if getattr(args, "teacher", None):  # distilled: the teacher and the loss
        k = f"the teacher's top {args.distill_top_k} tokens plus the rest" if args.distill_top_k else "the vocabulary"
        distilled = (f"\nDistilled from the teacher `{args.teacher}`: loss = {1 - args.distill_alpha:g} x "
                     f"cross-entropy + {args.distill_alpha:g} x T^2 x KL(teacher || student) at temperature T = "
                     f"{args.distill_temperature:g}, over {k}.\n")
        hp.update({"teacher": args.teacher, "distill_alpha": args.distill_alpha,
                   "distill_temperature": args.distill_temperature, "distill_top_k": args.distill_top_k})
    hp_rows = "\n".join(f"| {k} | {v} |" for k, v in hp.items())
    evals = ""
    if eval_results:
        rows = "\n".join(f"| {task} | {metric} | {value:.4f} |" for task, metrics in eval_results.items()
                         for metric, value in metrics.items() if isinstance(value, (int, float)))
        evals = f"\n## Evaluation\n| task | metric | value |\n|---|---|---|\n{rows}\n"
    base = (f"\nInitialised from `{args.init_from}`.\n" if args.init_from else "") + distilled
    return f"""---
library_name: transformers
license: apache-2.0
pipeline_tag: text-generation
tags: [tinyllama, llama, pretraining{', distillation' if distilled else ''}]
---
# {args.run_name} ({args.stage}, step {metadata['step']})

A TinyLlama-recipe model ({n_params / 1e6:.1f}M parameters, `{args.model_config}`), trained with
`recipes/pretrain.py` of the TinyLlama recipes repository.{base}

- tokens seen in this stage: {metadata['tokens_seen']:,}
- steps: {metadata['step']:,} of {args.max_steps:,}

## Data mixture
| source | weight |
|---|---|
{mixture}

## Hyperparameters
| name | value |
|---|---|
{hp_rows}
{evals}
## Use
```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("{args.hub_model_id or 'PATH'}")
model = AutoModelForCausalLM.from_pretrained("{args.hub_model_id or 'PATH'}")
```
"""
