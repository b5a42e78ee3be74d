"""Write a SentencePiece-exact fast tokenizer folder from a SentencePiece BPE tokenizer.model (Llama-2, TinyLlama).

    python scripts/convert_tokenizer.py path/to/tokenizer.model --out tokenizers/tinyllama-exact
    python scripts/convert_tokenizer.py path/to/TinyLlama_v1.1 --out tokenizers/tinyllama-exact   # a local folder
    python scripts/convert_tokenizer.py TinyLlama/TinyLlama_v1.1 --out tokenizers/tinyllama-exact  # Hub id (online)

TinyLlama was pretrained on SentencePiece's ids. Before continuing its pretraining, prepare the data with a fast
tokenizer that gives exactly those ids: this script builds one (tinyllama/tokenizer.py), writes tokenizer.model
(copied), tokenizer.json and tokenizer_config.json to --out (keeping the source folder's chat template, pad token
and model_max_length), and prints how the source folder's own tokenizer.json (if any) and the new one compare with
SentencePiece on a built-in sample (standard-library code, prose, Chinese, math, edge cases; no network). Then use
--out as the tokenizer everywhere: `scripts/prepare_data.py --tokenizer <out>`, the pretraining `tokenizer:` key,
inference. Nothing is written if the new tokenizer disagrees with SentencePiece on the sample.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tinyllama.utils import entry_point, setup_logging  # noqa: E402


def _source(arg: str) -> tuple[Path, str | None]:
    """(tokenizer.model, folder to read the chat template etc. from, or None)."""
    path = Path(arg)
    if path.is_file():
        folder = path.parent
        return path, str(folder) if (folder / "tokenizer_config.json").is_file() else None
    if path.is_dir():
        if not (path / "tokenizer.model").is_file():
            raise FileNotFoundError(f"{arg}: the folder has no tokenizer.model (this converts SentencePiece models)")
        return path / "tokenizer.model", str(path)
    if path.suffix == ".model" or arg.startswith((".", "/")) or arg.count("/") != 1:
        raise FileNotFoundError(f"{arg}: no such file or folder")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(arg, "tokenizer.model")), arg
    except Exception as e:  # offline, gated, no such repo or file: one message
        raise FileNotFoundError(f"{arg}: not a local file or folder, and its tokenizer.model could not be fetched "
                                f"from the Hugging Face Hub ({type(e).__name__}: {e})") from None


def _row(name: str, result) -> str:
    return (f"| {name} | {result.documents} | {result.differing_documents} ({result.document_rate:.1%}) | "
            f"{result.differing_tokens:,} | {result.token_count_difference:+.3%} |")


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="TOKENIZER_MODEL_OR_FOLDER",
                   help="a SentencePiece BPE tokenizer.model, a folder holding one, or a Hub id (online)")
    p.add_argument("--out", required=True, help="the tokenizer folder to write (replaced if it exists)")
    p.add_argument("--model_max_length", type=int, default=None,
                   help="default: the source folder's, else 2048 (TinyLlama's context)")
    p.add_argument("--sample_size", type=int, default=200, help="documents of each kind in the agreement sample")
    a = p.parse_args(argv)
    setup_logging()
    from tinyllama.demo_corpus import builtin_sample
    from tinyllama.tokenizer import compare_with_sentencepiece, load_proto, save_tokenizer_folder, \
        sentencepiece_processor

    model_file, folder = _source(a.source)
    chat_template, pad_token, max_length, old = None, None, 2048, None
    if folder is not None:
        from transformers import AutoTokenizer

        try:
            old = AutoTokenizer.from_pretrained(folder)
        except Exception as e:  # noqa: BLE001 - the source folder's own tokenizer is only compared, not needed
            print(f"note: {folder}'s own tokenizer could not be loaded ({type(e).__name__}: {e}); converting "
                  f"its tokenizer.model alone", file=sys.stderr)
        if old is not None:
            chat_template = old.chat_template if isinstance(old.chat_template, str) else None
            pieces = {piece.piece for piece in load_proto(model_file).pieces}
            pad_token = old.pad_token if old.pad_token in pieces else None  # e.g. a chat model's <unk> as pad
            if old.pad_token is not None and pad_token is None:
                print(f"note: the source's pad token {old.pad_token!r} is not a piece of tokenizer.model; not kept",
                      file=sys.stderr)
            if old.model_max_length and old.model_max_length < 10**9:
                max_length = old.model_max_length
    if a.model_max_length:
        max_length = a.model_max_length

    sample = builtin_sample(a.sample_size)
    texts = [t for kind in sample.values() for t in kind]
    out = save_tokenizer_folder(model_file, a.out, model_max_length=max_length, chat_template=chat_template,
                                pad_token=pad_token, check_texts=texts)
    from transformers import AutoTokenizer

    sp = sentencepiece_processor(model_file)
    new = AutoTokenizer.from_pretrained(str(out))
    print(f"wrote {out} (tokenizer.model, tokenizer.json, tokenizer_config.json"
          f"{', chat template' if chat_template else ''}{', pad token ' + pad_token if pad_token else ''})")
    print(f"\nAgreement with SentencePiece ({model_file}) on the built-in sample "
          f"({', '.join(f'{len(v)} {k}' for k, v in sample.items())}):\n")
    print("| tokenizer | documents | documents differing | SentencePiece tokens differing | token count vs SP |")
    print("|---|---:|---:|---:|---:|")
    if old is not None:
        print(_row(f"source folder's ({type(old).__name__})", compare_with_sentencepiece(old, sp, texts)))
    print(_row(f"{out} (new)", compare_with_sentencepiece(new, sp, texts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
