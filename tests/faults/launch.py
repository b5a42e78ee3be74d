"""Run a recipe or script with a fault injected at a named moment: the fault suite's launcher.

    python tests/faults/launch.py recipes/pretrain.py --config run.yaml ...
    TINYLLAMA_TEST_FAULT="kill@checkpoint:2"      SIGKILL this process at the 2nd checkpoint write
    TINYLLAMA_TEST_FAULT="enospc@checkpoint:2"    raise OSError(ENOSPC) there instead
    TINYLLAMA_TEST_FAULT="sigterm@step:2"         send this process SIGTERM there (a preemption: the recipe
                                                  finishes the step, saves a checkpoint and exits)

Points (each counted per process, the n-th occurrence triggers):
  step        pretraining: before the n-th micro-batch's forward (mid-step when gradient accumulation > 1)
  checkpoint  pretraining: accelerate's save_state has written the .tmp-step-N folder, before train_state.json
              and the rename (the moment a checkpoint looks whole but is not yet committed)
  export      pretraining: inside atomic_dir, weights and tokenizer written, before the move into export/step-N
  upload      pretraining: the background Hub uploader is about to upload an export
  shard       data preparation: a shard's .bin/.idx are written and closed, before the manifest records them
  shard_add   data preparation: before a block of tokens is appended to an open shard
  worker      data preparation: one tokenizer worker process is SIGKILLed (what the out-of-memory killer does)
              before the n-th batch is handed to the pool; the main process goes on ("kill@worker:N")
  sft_save    SFT (Trainer): checkpoint-N has the adapter and optimizer, but not yet RNG and trainer_state.json
  sft_step    SFT (Trainer): before the n-th training step

    TINYLLAMA_TEST_RECORD_SAMPLES=DIR             append every training sample index this process reads to
                                                  DIR/samples-<pid>.txt (MixtureDataset.__getitem__; with
                                                  num_workers 0 a sample is read when it is consumed)
    TINYLLAMA_TEST_NAN_STEPS=2,3                  pretraining: the loss of this process's optimizer steps 2 and 3
                                                  (0-based, counted from the first step this process runs) is NaN
    TINYLLAMA_TEST_SIGTERM_AFTER_STEP=N           pretraining: SIGTERM to this process when its N-th optimizer step
                                                  returns (a preemption between steps: the checkpoint is step N of
                                                  a run that started at 0)
    TINYLLAMA_TEST_NO_DS_SHM_OP=1                 a DeepSpeed process on CPU does not JIT-compile DeepSpeed's
                                                  shared-memory all-reduce op (used only by inference_all_reduce,
                                                  never in training): its build is cached in ~/.cache/torch_extensions
                                                  keyed by the source paths, so every fresh venv (each CI clone)
                                                  recompiled it in its first DeepSpeed test, 60-90 s

The hooks wrap library functions from the outside (nothing in the package changes for the tests); with the
variables unset the script runs exactly as ``python SCRIPT``. The same variables work in every Python process that
has ``tests/faults/site`` on PYTHONPATH (its ``sitecustomize`` installs them at start-up): how a fault reaches the
recipe processes a pipeline starts. In-process tests wrap the recipe's ``train_step`` with :func:`nan_steps` and
:func:`sigterm_after_step` (``fault_utils``).
"""

from __future__ import annotations

import errno
import os
import runpy
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _action(kind: str, point: str):
    if kind == "kill":
        sys.stderr.write(f"[fault] SIGKILL at {point}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if kind == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise SystemExit(f"unknown fault action {kind!r}")


def install(spec: str) -> None:
    kind, _, where = spec.partition("@")
    point, _, nth = where.partition(":")
    nth = int(nth or 1)
    count = {"n": 0}

    def hit() -> bool:
        count["n"] += 1
        return count["n"] == nth

    def wrap(owner, name: str, before: bool = True):
        original = getattr(owner, name)

        def wrapper(*a, **k):
            if before and hit():
                _action(kind, point)
            out = original(*a, **k)
            if not before and hit():
                _action(kind, point)
            return out

        setattr(owner, name, wrapper)

    if point == "step":
        import tinyllama.training.core as core

        wrap(core, "forward_loss")
    elif point == "checkpoint":
        from accelerate import Accelerator

        wrap(Accelerator, "save_state", before=False)
    elif point == "export":
        import tinyllama.checkpoints as ckpt

        original = ckpt.atomic_write_text

        def write(path, text):
            if Path(path).name == ckpt.METADATA_FILE and hit():
                _action(kind, point)
            return original(path, text)

        ckpt.atomic_write_text = write
    elif point == "upload":
        from tinyllama.training.hub import HubUploader

        wrap(HubUploader, "_upload")
    elif point == "shard":
        from tinyllama.data.shards import ShardWriter

        original = ShardWriter.close

        def close(self):
            out = original(self)
            if out is not None and hit():
                _action(kind, point)
            return out

        ShardWriter.close = close
    elif point == "shard_add":
        from tinyllama.data.shards import ShardWriter

        wrap(ShardWriter, "add")
    elif point == "worker":
        from concurrent.futures import ProcessPoolExecutor

        original = ProcessPoolExecutor.submit

        def submit(self, *a, **k):
            if hit() and self._processes:
                victim = next(iter(self._processes))
                sys.stderr.write(f"[fault] SIGKILL to worker process {victim}\n")
                sys.stderr.flush()
                os.kill(victim, signal.SIGKILL)
            return original(self, *a, **k)

        ProcessPoolExecutor.submit = submit
    elif point == "sft_save":
        from transformers import Trainer

        wrap(Trainer, "_save_rng_state")
    elif point == "sft_step":
        from transformers import Trainer

        wrap(Trainer, "training_step")
    else:
        raise SystemExit(f"unknown fault point {point!r}")


def nan_steps(train_step, steps):
    """``train_step`` whose calls number ``steps`` (0-based) run with a NaN loss: ``forward_loss`` wrapped for those
    calls only (train_step reads it from its module at each call)."""
    import tinyllama.training.core as core

    calls = {"n": 0}

    def wrapper(*a, **k):
        n, calls["n"] = calls["n"], calls["n"] + 1
        if n not in steps:
            return train_step(*a, **k)
        original = core.forward_loss
        core.forward_loss = lambda *fa, **fk: original(*fa, **fk) * float("nan")
        try:
            return train_step(*a, **k)
        finally:
            core.forward_loss = original

    return wrapper


def sigterm_after_step(train_step, step: int):
    """``train_step`` that sends this process SIGTERM when its ``step``-th call returns."""
    calls = {"n": 0}

    def wrapper(*a, **k):
        out = train_step(*a, **k)
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    return wrapper


def install_from_env() -> None:
    """Every fault the environment asks for, installed before the recipe imports what it wraps."""
    if os.environ.get("TINYLLAMA_TEST_FAULT"):
        install(os.environ["TINYLLAMA_TEST_FAULT"])
    if os.environ.get("TINYLLAMA_TEST_RECORD_SAMPLES"):
        record_samples(os.environ["TINYLLAMA_TEST_RECORD_SAMPLES"])
    if os.environ.get("TINYLLAMA_TEST_NO_DS_SHM_OP") and os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
        import importlib

        # (import_module: the attribute deepspeed.comm.torch is the torch library, re-exported by deepspeed.comm)
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    if os.environ.get("TINYLLAMA_TEST_NAN_STEPS") or os.environ.get("TINYLLAMA_TEST_SIGTERM_AFTER_STEP"):
        import tinyllama.training.core as core

        if os.environ.get("TINYLLAMA_TEST_NAN_STEPS"):
            core.train_step = nan_steps(core.train_step, {int(s) for s in
                                                          os.environ["TINYLLAMA_TEST_NAN_STEPS"].split(",")})
        if os.environ.get("TINYLLAMA_TEST_SIGTERM_AFTER_STEP"):
            core.train_step = sigterm_after_step(core.train_step, int(os.environ["TINYLLAMA_TEST_SIGTERM_AFTER_STEP"]))


def record_samples(folder: str) -> None:
    from tinyllama.data.mixture import MixtureDataset

    original = MixtureDataset.__getitem__
    out = open(Path(folder) / f"samples-{os.getpid()}.txt", "a", buffering=1)  # (line-buffered: kills lose nothing)

    def getitem(self, index):
        out.write(f"{index}\n")
        return original(self, index)

    MixtureDataset.__getitem__ = getitem


def main() -> None:
    script, *args = sys.argv[1:]
    sys.path.insert(0, str(REPO))
    install_from_env()
    path = Path(script) if Path(script).is_absolute() else REPO / script
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(path.parent))
    runpy.run_path(str(path), run_name="__main__")


if __name__ == "__main__":
    main()
