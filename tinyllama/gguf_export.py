"""Model folder -> GGUF file for llama.cpp, with llama.cpp's own converter and quantiser, checked by llama.cpp.

Nothing here re-implements GGUF: the conversion is llama.cpp's ``convert_hf_to_gguf.py`` (with its ``gguf-py``),
the quantisation is llama.cpp's ``llama_model_quantize`` (through llama-cpp-python), and the check loads the result
in llama.cpp. Both come from one pinned release, llama-cpp-python ``LLAMA_CPP_PYTHON_VERSION``: its source
distribution vendors the llama.cpp tree it builds (converter, ``gguf-py`` 0.19.0, C++ library), so the converter
and the runtime that reads its output are the same llama.cpp commit. ``scripts/llama_cpp.sh`` fetches that source
from PyPI (by exact version) into a cache outside the repository and builds and installs the wheel.

What can go wrong, and what is checked:
- a folder without ``tokenizer.model``: llama.cpp's converter then rebuilds a vocabulary from ``tokenizer.json`` that
  tokenizes like neither SentencePiece nor transformers (measured: 202 of 206 demo texts differed). Refused.
- the end of generation: ``</s>`` must be the GGUF's EOS (llama.cpp stops there) and a chat model's template must
  be in the file (llama.cpp formats chats with it). Checked after conversion, in llama.cpp.
- tokenization: llama.cpp, loading the written file, must tokenize probe texts (code, prose, whitespace runs,
  digits, non-ASCII) exactly as transformers does. A file that does not is deleted, with the first difference.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from . import environment

log = logging.getLogger(__name__)

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
# Types llama.cpp's converter writes directly, and the ones llama_model_quantize makes from the f16 file
# (llama.cpp's LLAMA_FTYPE_MOSTLY_* names, lower case).
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
QUANTIZE_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m",
                  "q5_k_s", "q5_k_m", "q6_k")
GGUF_TYPES = CONVERTER_TYPES + QUANTIZE_TYPES
SETUP_HINT = "bash scripts/llama_cpp.sh   (fetches llama-cpp-python {v} from PyPI, builds and installs it)"

# Probe texts for the tokenization check: the cases where tokenizers usually part ways (leading and repeated
# spaces, tabs and newlines, digits, code, non-ASCII and byte fallback, text that looks like special tokens).
PROBE_TEXTS = (
    "Hello world", " Hello world", "Hello  world", "   three leading spaces", "trailing spaces   ",
    "def f(x):\n    return x + 1\n\n\nclass A:\n\tpass\n", "numbers 1234567890 and 3.14159",
    "naïve café, Äpfel, 東京, 🦙 emoji", "special tokens </s> and <s> inside text", "line one\nline two\r\nline three",
    "for i in range(10):\n        print(i ** 2)  # comment", "x=[1,2,3];y={'a':1}",
)


def default_cache() -> Path:
    """Where scripts/llama_cpp.sh keeps the llama-cpp-python source distribution and wheels (same rule as there)."""
    return environment.wheel_cache()


def llama_cpp_source() -> Path:
    """The llama.cpp tree vendored in llama-cpp-python's source distribution (converter and gguf-py)."""
    src = environment.llama_cpp_source() or default_cache() / "src" / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}" / \
        "vendor" / "llama.cpp"
    if not (src / "convert_hf_to_gguf.py").is_file():
        raise FileNotFoundError(f"llama.cpp's converter not found at {src}/convert_hf_to_gguf.py. Run "
                                + SETUP_HINT.format(v=LLAMA_CPP_PYTHON_VERSION)
                                + ", or point TINYLLAMA_LLAMA_CPP_SRC at a llama.cpp checkout of the same version")
    return src


def import_llama_cpp():
    """llama_cpp, or one clear message saying how to get it."""
    try:
        import llama_cpp
    except ImportError as e:
        raise ImportError("llama-cpp-python is not installed. Run "
                          + SETUP_HINT.format(v=LLAMA_CPP_PYTHON_VERSION)) from e
    if llama_cpp.__version__ != LLAMA_CPP_PYTHON_VERSION:
        log.warning("llama-cpp-python %s is installed; this repository checks its GGUF files with %s",
                    llama_cpp.__version__, LLAMA_CPP_PYTHON_VERSION)
    return llama_cpp


def check_model_dir(model_dir: Path) -> dict:
    """Refuse, before any work, a folder llama.cpp would convert wrongly or not at all. Returns its config."""
    import json

    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir} is not a folder (give a model folder, e.g. outputs/<run>/export/final)")
    if (model_dir / "adapter_config.json").is_file():
        raise ValueError(f"{model_dir} is a LoRA adapter: merge it into its base first (python scripts/merge_lora.py "
                         f"{model_dir} --output_dir <merged>), then export the merged folder")
    problems = []
    config_file = model_dir / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if not config:
        problems.append("no config.json")
    elif config.get("model_type") != "llama":
        problems.append(f"model_type is {config.get('model_type')!r}: this exports Llama-architecture models")
    if not list(model_dir.glob("*.safetensors")) and not list(model_dir.glob("*.bin")):
        problems.append("no weights (*.safetensors)")
    if not (model_dir / "tokenizer.model").is_file():
        problems.append("no tokenizer.model: llama.cpp's converter would rebuild the vocabulary from "
                        "tokenizer.json, and llama.cpp would tokenize differently from transformers and from the "
                        "data the model was trained on. Export with the SentencePiece model beside tokenizer.json")
    if problems:
        raise ValueError(f"cannot export {model_dir} to GGUF: " + "; ".join(problems))
    return config


def convert(model_dir: Path, out: Path, outtype: str) -> None:
    """llama.cpp's convert_hf_to_gguf.py, as a subprocess (its own argument parsing, logging and exit code)."""
    src = llama_cpp_source()
    cmd = [sys.executable, str(src / "convert_hf_to_gguf.py"), str(model_dir), "--outfile", str(out),
           "--outtype", outtype]
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)  # the converter then imports the gguf-py beside it (the same llama.cpp commit)
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0 or not out.is_file():
        raise RuntimeError(f"llama.cpp's converter failed (exit {result.returncode}): {' '.join(cmd)}\n"
                           + result.stderr[-4000:])


def quantize(src: Path, out: Path, qtype: str, threads: int | None = None) -> None:
    """llama.cpp's llama_model_quantize (what the llama-quantize tool calls), through llama-cpp-python."""
    import ctypes

    llama_cpp = import_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype.upper()}")
    params.nthread = threads or os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0 or not out.is_file():
        raise RuntimeError(f"llama_model_quantize({src} -> {qtype}) failed with code {rc}")


def load_gguf(path: str | os.PathLike, *, vocab_only: bool = False, n_ctx: int = 512, logits_all: bool = False):
    """A llama_cpp.Llama on ``path``, quiet, deterministic, CPU."""
    llama_cpp = import_llama_cpp()
    return llama_cpp.Llama(model_path=str(path), vocab_only=vocab_only, n_ctx=n_ctx, n_batch=n_ctx,
                           logits_all=logits_all, n_threads=max(1, min(4, os.cpu_count() or 1)), seed=0,
                           verbose=False)


def gguf_metadata(path: str | os.PathLike) -> dict:
    """The GGUF key-value metadata as llama.cpp reads it (strings)."""
    return dict(load_gguf(path, vocab_only=True).metadata)


def tokenization_differences(llm, tokenizer, texts) -> list[tuple[str, list[int], list[int]]]:
    """(text, transformers ids, llama.cpp ids) for each text the two tokenize differently (both with BOS, and both
    reading special-token text such as "</s>" as the special token, as transformers and llama-cpp-python's
    completion and chat calls do)."""
    out = []
    for text in texts:
        hf = tokenizer(text, add_special_tokens=True)["input_ids"]
        cpp = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        if hf != cpp:
            out.append((text, hf, cpp))
    return out


def verify(path: Path, model_dir: Path, texts=PROBE_TEXTS) -> dict:
    """Load ``path`` in llama.cpp and check it against the model folder: tokenization, BOS/EOS, chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    llm = load_gguf(path, vocab_only=True)
    problems = []
    if llm.n_vocab() != len(tokenizer):
        problems.append(f"vocabulary of {llm.n_vocab()} tokens, transformers has {len(tokenizer)}")
    if llm.token_eos() != tokenizer.eos_token_id:
        problems.append(f"EOS is id {llm.token_eos()}, transformers' is {tokenizer.eos_token_id} "
                        f"({tokenizer.eos_token}): llama.cpp would not stop where the model does")
    if llm.token_bos() != tokenizer.bos_token_id:
        problems.append(f"BOS is id {llm.token_bos()}, transformers' is {tokenizer.bos_token_id}")
    template = llm.metadata.get("tokenizer.chat_template")
    if (tokenizer.chat_template or None) != (template or None):
        problems.append("the chat template differs from the model folder's" if template else
                        "the model folder has a chat template and the GGUF file has none")
    diffs = tokenization_differences(llm, tokenizer, texts)
    if diffs:
        text, hf, cpp = diffs[0]
        problems.append(f"llama.cpp tokenizes {len(diffs)} of {len(texts)} probe texts differently from "
                        f"transformers; first: {text!r}: transformers {hf}, llama.cpp {cpp}")
    if problems:
        raise ValueError(f"{path} does not match {model_dir}: " + "; ".join(problems))
    return {"n_vocab": llm.n_vocab(), "eos": llm.token_eos(), "chat_template": bool(template),
            "probe_texts": len(texts)}


def export_gguf(model_dir: str | os.PathLike, out: str | os.PathLike, gguf_type: str = "f16",
                check: bool = True) -> Path:
    """Write ``out`` (a GGUF file of ``model_dir`` in ``gguf_type``), verified in llama.cpp unless ``check`` is off.
    Written to a temporary name in the same folder and renamed when whole and checked."""
    model_dir, out = Path(model_dir), Path(out)
    gguf_type = gguf_type.lower()
    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"unknown GGUF type {gguf_type!r}; choose from {', '.join(GGUF_TYPES)}")
    check_model_dir(model_dir)
    llama_cpp_source()
    if check or gguf_type in QUANTIZE_TYPES:
        import_llama_cpp()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        tmp_out = Path(tmp) / out.name
        if gguf_type in CONVERTER_TYPES:
            convert(model_dir, tmp_out, gguf_type)
        else:
            f16 = Path(tmp) / "f16.gguf"
            convert(model_dir, f16, "f16")
            quantize(f16, tmp_out, gguf_type)
        if check:
            info = verify(tmp_out, model_dir)
            log.info("checked in llama.cpp: %s", info)
        os.replace(tmp_out, out)
    return out
