"""The environment: every environment variable the project reads is read here, and nowhere else.

Settings come in through config files and the command line (``tinyllama.config``); the environment carries only
what the launchers and the Hugging Face libraries already use (``WORLD_SIZE``, ``ACCELERATE_USE_*``, ``HF_*``),
the evaluation script's documented ``EVAL_*`` variables (``evaluation/run_lm_eval.sh``, ``docs/evaluation.md``), and
a few paths of tool caches. The entry points (recipes, ``python -m tinyllama.evaluation``, scripts) and the checks
they run call these functions; ``tests/test_architecture.py`` keeps every other module from reading ``os.environ``.
(Writing a variable for a child process, or passing the whole environment on to one, is not reading a setting.)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _get(name: str) -> str | None:
    """The variable's value, or None when it is unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or None


def flag(name: str) -> bool:
    """True when ``name`` is set to 1/true/yes/on (any case)."""
    return (_get(name) or "").lower() in _TRUE


def offline(datasets: bool = False) -> bool:
    """The one answer to "may the Hugging Face Hub be reached?": False when HF_HUB_OFFLINE (or transformers' older
    TRANSFORMERS_OFFLINE) is set to 1/true/yes/on; with ``datasets``, HF_DATASETS_OFFLINE counts too."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") + (("HF_DATASETS_OFFLINE",) if datasets else ())
    return any(flag(k) for k in names)


# ---- what the launcher set up ------------------------------------------------------------------------------------
def world_size() -> int:
    """The number of processes the launcher started (torchrun's and accelerate's WORLD_SIZE; 1 when unset)."""
    return int(_get("WORLD_SIZE") or 1)


def launched_with_deepspeed() -> bool:
    """``accelerate launch`` with a DeepSpeed config (accelerate sets ACCELERATE_USE_DEEPSPEED)."""
    return flag("ACCELERATE_USE_DEEPSPEED")


def launched_with_fsdp() -> bool:
    """``accelerate launch`` with an FSDP config (accelerate sets ACCELERATE_USE_FSDP)."""
    return flag("ACCELERATE_USE_FSDP")


# ---- the Hugging Face Hub ----------------------------------------------------------------------------------------
def hub_endpoint() -> str | None:
    """HF_ENDPOINT (a mirror or a local server), read when the client is made rather than when huggingface_hub was
    imported."""
    return _get("HF_ENDPOINT")


def hub_token() -> str | None:
    """The token huggingface_hub would use from the environment (HF_TOKEN, or the older HUGGING_FACE_HUB_TOKEN)."""
    return _get("HF_TOKEN") or _get("HUGGING_FACE_HUB_TOKEN")


# ---- paths of caches and tools ------------------------------------------------------------------------------------
def cache_home() -> Path:
    """``$XDG_CACHE_HOME``, else ``~/.cache``."""
    return Path(_get("XDG_CACHE_HOME") or Path.home() / ".cache")


def wheel_cache() -> Path:
    """Where scripts/llama_cpp.sh keeps llama-cpp-python's source and wheels (TINYLLAMA_WHEEL_CACHE, same rule)."""
    return Path(_get("TINYLLAMA_WHEEL_CACHE") or cache_home() / "tinyllama-wheels")


def llama_cpp_source() -> Path | None:
    """A llama.cpp tree given by TINYLLAMA_LLAMA_CPP_SRC (else None: the one in the wheel cache)."""
    value = _get("TINYLLAMA_LLAMA_CPP_SRC")
    return Path(value) if value else None


def debug() -> bool:
    """TINYLLAMA_DEBUG: entry points print the traceback of a user error, not only its message."""
    return bool(_get("TINYLLAMA_DEBUG"))


# ---- evaluation -----------------------------------------------------------------------------------------------------
def eval_data_dir() -> str | None:
    """EVAL_DATA_DIR: local copies of the evaluation tasks' data (docs/evaluation.md), for lm-eval offline and for
    data preparation's decontamination."""
    return _get("EVAL_DATA_DIR")


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """The variables ``evaluation/run_lm_eval.sh`` documents, as ``python -m tinyllama.evaluation run`` takes them."""

    out: str | None = None  # EVAL_OUT
    backend: str = "hf"  # EVAL_BACKEND
    batch_size: str | None = None  # EVAL_BATCH_SIZE
    dtype: str | None = None  # EVAL_DTYPE
    tasks: str | None = None  # EVAL_TASKS
    data_dir: str | None = None  # EVAL_DATA_DIR
    allow_code_execution: bool = False  # ALLOW_CODE_EXECUTION
    chat_template: bool | None = None  # EVAL_CHAT_TEMPLATE: 1, 0, or unset/auto (the suite decides)


def eval_settings() -> EvalSettings:
    """The EVAL_* variables, checked (a bad EVAL_CHAT_TEMPLATE raises ValueError naming it)."""
    template = (_get("EVAL_CHAT_TEMPLATE") or "").lower()
    if template not in ("", "auto") + _TRUE + _FALSE:
        raise ValueError(f"EVAL_CHAT_TEMPLATE must be 1 or 0 (or unset: the suite decides), got {template!r}")
    return EvalSettings(
        out=_get("EVAL_OUT"), backend=_get("EVAL_BACKEND") or "hf", batch_size=_get("EVAL_BATCH_SIZE"),
        dtype=_get("EVAL_DTYPE"), tasks=_get("EVAL_TASKS"), data_dir=eval_data_dir(),
        allow_code_execution=flag("ALLOW_CODE_EXECUTION"),
        chat_template=None if template in ("", "auto") else template in _TRUE)
