"""Export a model folder to one GGUF file for llama.cpp (laptops, phones, llama-server, LM Studio, Ollama).

    python scripts/export_gguf.py outputs/demo/export/final --out demo-f16.gguf
    python scripts/export_gguf.py outputs/tinyllama-chat-dpo --out chat-q4_k_m.gguf --type q4_k_m

MODEL_DIR is any export of this repository (a pretraining ``export/...`` folder, an SFT/DPO output, a merged LoRA
model): safetensors, config, and the tokenizer with its ``tokenizer.model``. The conversion is llama.cpp's own
``convert_hf_to_gguf.py`` and the quantisation llama.cpp's own ``llama_model_quantize``, both from
llama-cpp-python 0.3.36's source distribution (``bash scripts/llama_cpp.sh`` fetches, builds and installs it once).
f32, f16, bf16 and q8_0 are written by the converter; the other types are quantised from the f16 file.

The written file is then loaded in llama.cpp and checked against the folder before it is kept: the same vocabulary,
BOS and EOS (``</s>``: where generation stops), the chat template, and the same token ids as transformers on probe
texts. ``--no-check`` skips that (e.g. on a machine without llama-cpp-python, for f16/q8_0 only).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinyllama.gguf_export import GGUF_TYPES, export_gguf
from tinyllama.utils import entry_point


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("model_dir", help="a model folder (safetensors, config.json, tokenizer with tokenizer.model)")
    p.add_argument("--out", required=True, help="the .gguf file to write")
    p.add_argument("--type", default="f16", choices=GGUF_TYPES, help="weight type (default f16)")
    p.add_argument("--no-check", action="store_true", help="do not load the result in llama.cpp to check it")
    args = p.parse_args(argv)
    if not args.out.endswith(".gguf"):
        p.error(f"--out {args.out}: give a file name ending in .gguf")
    return args


@entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        out = export_gguf(args.model_dir, args.out, args.type, check=not args.no_check)
    except ImportError as e:  # llama-cpp-python missing: the message says how to install it
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = Path(out).stat().st_size / 2**20
    print(f"wrote {out} ({args.type}, {size:.1f} MiB)" + ("" if args.no_check else "; checked in llama.cpp"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
