"""Small shared helpers: "a Hub id or a local path?", repository paths, atomic writes, logging setup and the
entry-point error wrapper."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import sys
import traceback
from pathlib import Path

from . import environment

TMP_PREFIX = ".tmp-"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def is_hub_id(name: str | os.PathLike | None) -> bool:
    """The one answer to "a Hub id or a local path?", for models, checkpoints and data sets alike.

    A Hub id is ``owner/name`` or a bare ``name`` (letters, digits, ``._-``) that is not on disk, does not start
    with . / or ~, and does not begin with a folder that exists here or one the recipes write (``outputs/``,
    ``data/``); anything else is a path, so a mistyped folder gets "not found" rather than a Hub lookup.
    """
    if not name:
        return False
    name = str(name)
    if Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or not _HUB_ID.match(name):
        return False
    first = name.split("/")[0]
    return "/" not in name or not (first in ("outputs", "data") or Path(first).is_dir())


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def complete_cpu_launch() -> None:
    """Tell accelerate "CPU" for a multi-process launch on a machine without CUDA (DDP over gloo); call it first.

    ``accelerate launch`` with a multi-process config (``use_cpu: true`` included, configs/accelerate/cpu.yaml) starts
    the processes through torchrun without passing "CPU" on; accelerate then sets up a process group with distributed
    type NO: no DDP wrapper, no-op barriers and reductions, every rank training on its own. ``accelerate launch
    --cpu`` would set ``ACCELERATE_USE_CPU``; this sets it the same way (accelerate's state and transformers'
    TrainingArguments both read it). DeepSpeed launches set their own distributed type and are left alone.
    """
    if environment.world_size() < 2 or environment.launched_with_deepspeed():
        return
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable; a no-op where the file system cannot."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_tree(path: Path) -> None:
    for p in sorted(Path(path).rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(Path(path))


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, keep_tmp_on_error: bool = False):
    """Yield a temporary folder beside ``final``; when the block succeeds, move it into place whole.

    A killed process leaves only a ``.tmp-*`` folder, which nothing reads as complete. An existing ``final`` is
    replaced only after the new one is fully written and synced.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}.{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        if final.exists():
            old = final.parent / f"{TMP_PREFIX}old-{final.name}.{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        if not keep_tmp_on_error:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def setup_logging(level: int = logging.INFO, main_process: bool = True) -> None:
    """One format for every entry point; non-main processes log warnings only."""
    logging.basicConfig(
        level=level if main_process else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )


class RunStopped(RuntimeError):
    """A run stopped with a message for the user, not for a bad input (too many non-finite steps, a worker process
    killed); exit status 3."""


USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, OSError)


def entry_point(fn):
    """Run ``fn`` as a command: a mistake a user can cause prints one message (no traceback) and exits 2.

    ``TINYLLAMA_DEBUG=1`` shows the traceback as well.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RunStopped as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(3) from None
        except USER_ERRORS as e:
            if environment.debug():
                traceback.print_exc()
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return wrapper


def lazy_exports(package: str, exports: dict[str, str]):
    """A package's ``__getattr__`` and ``__dir__`` that import ``name`` from its module ``exports[name]`` on first use
    (so importing the package imports none of its modules: tokenizer workers never load torch, and
    ``from tinyllama.training import PretrainArgs`` does not load accelerate)."""
    import importlib

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
