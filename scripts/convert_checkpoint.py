"""Convert checkpoints between TinyLlama's lit_gpt, litgpt, Meta's format and this repository's model folders.

    # TinyLlama's own pretraining checkpoint (lit_gpt .pth: fused query/key/value grouped per key/value head)
    python scripts/convert_checkpoint.py lit_gpt-to-hf out/tinyllama_1b/iter-480000-ckpt.pth --out models/step-480k \\
        --tokenizer path/to/llama-2/tokenizer.model            # --config tinyllama-1.1b is the default architecture
    # a litgpt checkpoint folder (lit_model.pth + model_config.yaml; its tokenizer files are used)
    python scripts/convert_checkpoint.py litgpt-to-hf checkpoints/TinyLlama/TinyLlama-1.1B-Chat-v1.0 --out models/chat
    # a Meta-format Llama folder (consolidated.*.pth + params.json; tokenizer.model there or one level up)
    python scripts/convert_checkpoint.py meta-to-hf llama-2-7b --out models/llama-2-7b --context 4096
    # an export of this repository -> a litgpt checkpoint folder (litgpt generate / chat / finetune read it)
    python scripts/convert_checkpoint.py hf-to-litgpt outputs/my-run/export/final --out checkpoints/my-run

The imports write a Hugging Face folder (config.json, model.safetensors, generation_config.json, tokenizer) that
``init_from``, evaluation, chat and the GGUF export read; transformers loads it back, every weight used, before it
is moved into place. Every tensor's name and shape is checked against the architecture before anything is written:
the wrong format or a shape that does not fit stops the conversion with one message naming the tensor. ``--out``
must not exist yet (or be empty). ``--dtype`` casts the weights (default: kept as stored). Layouts and their
sources: docs/reference.md, "Checkpoint formats"; checks: docs/use.md, "Checkpoints in and out".
"""

from __future__ import annotations

import argparse
import sys

from tinyllama.utils import entry_point

DTYPES = ("keep", "float32", "bfloat16", "float16")


def parse_args(argv=None) -> argparse.Namespace:
    from tinyllama.convert import DIRECTIONS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("direction", choices=DIRECTIONS)
    p.add_argument("source", help="the .pth file (lit_gpt-to-hf) or the checkpoint / model folder")
    p.add_argument("--out", required=True, help="the folder to write (must not exist, or be empty)")
    p.add_argument("--config", default=None,
                   help="lit_gpt-to-hf: the architecture, a configs/model name or JSON (default tinyllama-1.1b)")
    p.add_argument("--tokenizer", default=None,
                   help="imports: a tokenizer folder or tokenizer.model (default: the one beside the checkpoint)")
    p.add_argument("--context", type=int, default=None,
                   help="meta-to-hf: max_position_embeddings, which params.json does not hold (default 2048)")
    p.add_argument("--dtype", default="keep", choices=DTYPES, help="cast the weights (default: as stored)")
    return p.parse_args(argv)


@entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from tinyllama.convert import convert

    dtype = None if args.dtype == "keep" else getattr(torch, args.dtype)
    out = convert(args.direction, args.source, args.out, model_config=args.config, tokenizer=args.tokenizer,
                  dtype=dtype, context=args.context)
    print(f"wrote {out} ({args.direction})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
