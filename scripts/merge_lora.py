"""Merge a LoRA (or QLoRA) adapter into its base model and save a normal model folder.

    python scripts/merge_lora.py outputs/tinyllama-chat-sft-lora --output_dir outputs/tinyllama-chat-sft-lora-merged
    python scripts/merge_lora.py ADAPTER --output_dir OUT --base_model TinyLlama/TinyLlama_v1.1 --dtype bfloat16
    python scripts/merge_lora.py ADAPTER --output_dir OUT --push_to_hub you/tinyllama-chat   # HF_TOKEN in the env

The base is the adapter's ``base_model_name_or_path`` unless ``--base_model`` names another copy of it. A QLoRA
adapter is merged into the base loaded unquantized (``--dtype``; merging into 4-bit weights would round the
result to 4 bits). The folder gets the merged weights, the adapter's tokenizer (so its chat template), its
``config.yaml`` and a model card; it is written whole or not at all (a ``.tmp-*`` folder until complete).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from tinyllama.chat import check_model_source, is_adapter_dir
from tinyllama.utils import is_hub_id
from tinyllama.tokenizer import save_tokenizer
from tinyllama.utils import atomic_dir, entry_point


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("adapter", help="LoRA adapter folder (has adapter_config.json)")
    p.add_argument("--output_dir", required=True, help="where to write the merged model folder")
    p.add_argument("--base_model", default=None, help="base model folder or Hub id (default: the adapter's)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="dtype to load the base in and save (auto: the base's own)")
    p.add_argument("--push_to_hub", default=None, metavar="REPO_ID", help="also upload the folder to this Hub repo")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
    return p.parse_args(argv)


def merged_card(adapter: Path, base: str, dtype: str) -> str:
    from huggingface_hub import ModelCard

    note = (f"## Merged\n\nThe LoRA adapter `{adapter}` merged into its base `{base}` with peft's "
            f"`merge_and_unload` (dtype {dtype}) by scripts/merge_lora.py: a normal model folder, no peft needed.\n")
    readme = adapter / "README.md"
    if readme.is_file():
        card = ModelCard.load(readme)
        card.data.library_name = "transformers"
        card.data.base_model = base if is_hub_id(base) else None
        card.data.tags = [t for t in (card.data.tags or []) if t != "lora"] + ["merged"]
        card.text = card.text.replace("A TinyLlama chat LoRA adapter", "A TinyLlama chat model (merged LoRA)")
        return str(card).rstrip() + "\n\n" + note
    return f"# {adapter.name}-merged\n\n{note}"


def merge(adapter: str, output_dir: str, base_model: str | None = None, dtype: str = "auto") -> Path:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir = Path(adapter)
    if not adapter_dir.is_dir():
        raise FileNotFoundError(f"adapter folder not found: {adapter}")
    if not is_adapter_dir(adapter_dir):
        raise ValueError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json)")
    base = base_model or json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    check_model_source(base, "base model")
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto" if dtype == "auto" else getattr(torch, dtype))
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    has_tokenizer = (adapter_dir / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir) if has_tokenizer else base)
    with atomic_dir(output_dir) as tmp:
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)  # with its tokenizer.model
        if (adapter_dir / "config.yaml").is_file():
            shutil.copy(adapter_dir / "config.yaml", tmp / "config.yaml")
        (tmp / "README.md").write_text(merged_card(adapter_dir, base, str(model.dtype).replace("torch.", "")),
                                       encoding="utf-8")
    return Path(output_dir)


@entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    out = merge(args.adapter, args.output_dir, args.base_model, args.dtype)
    print(f"merged {args.adapter} into its base: {out}", file=sys.stderr)
    if args.push_to_hub:
        from huggingface_hub import create_repo, upload_folder

        create_repo(args.push_to_hub, private=args.private, exist_ok=True)
        upload_folder(repo_id=args.push_to_hub, folder_path=str(out), commit_message="Merged LoRA model")
        print(f"pushed to https://huggingface.co/{args.push_to_hub}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
