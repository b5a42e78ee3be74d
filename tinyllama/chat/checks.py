"""Early checks of the chat recipes' arguments: each one fails fast with a clear message (QLoRA without CUDA, a LoRA
adapter given where a full model is needed, a missing local folder, bf16 weights for a full fine-tune, a Hub token in
a config, a distillation teacher with another vocabulary) instead of a stack trace minutes later; and what a name is (a
local path or a Hub id).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Sequence

from .. import environment
from ..environment import offline
from ..tokenizer import differing_tokens
from ..utils import is_hub_id

log = logging.getLogger(__name__)


def is_adapter_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def check_model_source(name: str | None, field: str = "model_name_or_path", allow_adapter: bool = False) -> None:
    if not name:
        raise ValueError(f"{field} is required: a model folder (e.g. the pretraining export) or a Hub id such as "
                         "TinyLlama/TinyLlama_v1.1")
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"{field}: {name} is not a model folder")
        if is_adapter_dir(path) and not allow_adapter:
            raise ValueError(f"{field}: {name} is a LoRA adapter, not a model. Merge it into its base first: "
                             f"python scripts/merge_lora.py {name} --output_dir {name}-merged")
        if not (path / "config.json").is_file() and not is_adapter_dir(path):
            raise FileNotFoundError(f"{field}: {name} has no config.json; is it a Hugging Face model folder?")
    elif not is_hub_id(name):
        raise FileNotFoundError(f"{field}: model folder not found: {name}")


def check_quantization(model_args) -> None:
    """QLoRA/8-bit needs CUDA and bitsandbytes: say so before anything is loaded."""
    quantized = getattr(model_args, "load_in_4bit", False) or getattr(model_args, "load_in_8bit", False)
    if not quantized:
        return
    kind = "load_in_4bit (QLoRA)" if model_args.load_in_4bit else "load_in_8bit"
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"{kind} needs a CUDA GPU (bitsandbytes quantizes on the GPU), and this machine has none. "
                         "Use configs/chat/sft-lora.yaml (LoRA without quantization) here, or run on a GPU.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"{kind} needs the bitsandbytes package: pip install -r requirements-gpu.txt")
    if not model_args.use_peft:
        raise ValueError(f"{kind} trains adapters only: set use_peft: true (a quantized model cannot be fully "
                         "fine-tuned)")


HALF_DTYPES = ("bfloat16", "bf16", "float16", "fp16", "half")


def uses_deepspeed(training_args) -> bool:
    """DeepSpeed through the TrainingArguments (``deepspeed:``) or an ``accelerate launch`` DeepSpeed config."""
    return bool(getattr(training_args, "deepspeed", None)) or environment.launched_with_deepspeed()


def check_precision(model_args, training_args) -> None:
    """A full fine-tune must keep fp32 master weights: load the weights in float32 and let ``bf16: true`` autocast.

    With bf16 weights and no DeepSpeed, AdamW updates the bf16 weights themselves, and an update of about the
    learning rate is far below half the bf16 spacing of a typical weight (about 6e-5 for a weight near 0.02): it
    rounds away. Measured on the demo (DPO at lr 5e-7, 4 steps): 0.68% of the parameters changed at all with bf16
    weights, 76% with fp32 weights. DeepSpeed keeps an fp32 master copy of bf16 weights, so there it is allowed;
    LoRA trains fp32 adapters on a frozen base, so its base stays in bf16. An unset dtype ("auto" in transformers 5
    means the checkpoint's, bf16 for TinyLlama) becomes float32 here, with a log line."""
    if model_args.use_peft or uses_deepspeed(training_args):
        return
    dtype = str(model_args.dtype or "auto")
    if dtype in HALF_DTYPES:
        raise ValueError(
            f"dtype: {dtype} for a full fine-tune: AdamW would update {dtype} weights directly and lose most updates "
            f"(at learning rate {training_args.learning_rate:g} an update is far below the {dtype} spacing of a "
            "weight). Load the weights in float32 (--dtype float32; bf16: true keeps the speed through autocast), "
            "launch with DeepSpeed (configs/accelerate/deepspeed-zero2.yaml keeps fp32 master weights), or train "
            "LoRA adapters (use_peft: true)")
    if dtype == "auto":
        log.info("dtype unset for a full fine-tune: loading the weights in float32 (fp32 master weights; bf16: true "
                 "autocasts the compute)")
        model_args.dtype = "float32"


def precheck_argv(argv: Sequence[str]) -> None:
    """The checks that must win over everything else, run on the raw YAML + overrides before parsing: a Hub token
    in the config (it would be pickled into training_args.bin and pushed), and a QLoRA config on a machine without
    CUDA (which would otherwise fail on its ``bf16: true``, or deep in bitsandbytes, with a message that does not
    say what is wrong)."""
    from types import SimpleNamespace

    from ..config import load_yaml, split_cli

    config, overrides, _ = split_cli(argv)
    values = dict(load_yaml(config)) if config and Path(config).is_file() else {}
    values.update(overrides)

    for key in ("hub_token", "push_to_hub_token"):
        if values.get(key):
            raise ValueError(f"{key}: do not put the Hub token in a config or on the command line: Trainer pickles "
                             "its arguments into training_args.bin, which is saved and pushed with the model. Set "
                             "HF_TOKEN in the environment or run `hf auth login` instead.")

    def flag(key):
        return str(values.get(key, False)).lower() in ("true", "1", "yes")

    check_quantization(SimpleNamespace(load_in_4bit=flag("load_in_4bit"), load_in_8bit=flag("load_in_8bit"),
                                       use_peft=True))


def check_teacher_vocabulary(teacher: str, student: str, student_tokenizer: str | None = None, *,
                             teacher_revision: str | None = None, revision: str | None = None,
                             trust_remote_code: bool = False) -> None:
    """Distillation matches the teacher's next-token distribution token for token, so the teacher must have the
    student's vocabulary: the same number of output rows and the same token for every id. Read from the configs and
    tokenizers only (seconds), before any model is loaded; one message otherwise. TRL compares only the two
    vocab_size numbers, after both models are loaded: equal sizes are not enough (Mistral-7B and Llama-2 both have
    32000 tokens, different ones)."""
    from transformers import AutoConfig, AutoTokenizer

    def load(what, name, rev, field):
        try:
            return what.from_pretrained(name, revision=rev, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            hint = " (HF_HUB_OFFLINE is set: a Hub id must already be in the local cache)" if offline() else ""
            raise ValueError(f"{field}: cannot read the {'tokenizer' if what is AutoTokenizer else 'config'} of "
                             f"{name!r}{hint}: {str(e).splitlines()[0]}") from None

    def vocab_size(config):
        return (config.get_text_config() if hasattr(config, "get_text_config") else config).vocab_size

    field = "teacher_model_name_or_path"
    sizes = (vocab_size(load(AutoConfig, teacher, teacher_revision, field)),
             vocab_size(load(AutoConfig, student, revision, "model_name_or_path")))
    teacher_vocab = load(AutoTokenizer, teacher, teacher_revision, field).get_vocab()
    student_vocab = load(AutoTokenizer, student_tokenizer or student, revision, "tokenizer_name_or_path").get_vocab()
    why = None
    if sizes[0] != sizes[1]:
        why = f"its model has {sizes[0]} output tokens, the student's {sizes[1]}"
    elif teacher_vocab != student_vocab:
        differ = differing_tokens(teacher_vocab, student_vocab)
        why = (f"its tokenizer has {len(teacher_vocab)} tokens, the student's {len(student_vocab)}, and "
               f"{len(differ)} tokens differ in id (e.g. {differ[0]!r}: {teacher_vocab.get(differ[0])} in the teacher, "
               f"{student_vocab.get(differ[0])} in the student)")
    if why:
        raise ValueError(f"{field}: {teacher} has another vocabulary than the student {student}: {why}. Distillation "
                         "compares the two next-token distributions token for token, so the teacher must share the "
                         "student's tokenizer (TinyLlama's is Llama-2's: any Llama-2 model can teach it)")
