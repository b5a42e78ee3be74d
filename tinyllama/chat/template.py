"""The chat template and the tokenizer every chat stage uses.

One template (Zephyr's, as TinyLlama-Chat-v1.0 ships it) is used for training, with ``{% generation %}`` markers so
that TRL's ``assistant_only_loss`` masks every non-assistant token, and is saved with the model, so inference formats
prompts exactly as training did. The pad token is made distinct from EOS (TRL falls back to ``pad = eos``; any
collator that masks pad ids then also masks EOS, and the model never learns to stop).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..environment import offline

# Zephyr's template as TinyLlama-Chat-v1.0 ships it renders
#   <|system|>\n{system}</s>\n<|user|>\n{user}</s>\n<|assistant|>\n{assistant}</s>\n
# and the generation prompt "<|assistant|>\n". This template renders exactly that, with two additions:
# - {% generation %} ... {% endgeneration %} around each assistant reply *and its EOS*, so TRL's
#   assistant_only_loss trains the reply and the EOS that ends it, and nothing else (not the role markers, not the
#   "\n" after the EOS, which belongs to the next turn's prompt);
# - a leading BOS. The handbook rendered text, then tokenized it with add_special_tokens=True, so TinyLlama-Chat
#   saw BOS first; TRL and scripts/chat.py tokenize through the template (no special tokens added), so the BOS
#   must be in the template for the token sequence to be the same (and the base model always saw BOS first).
# Unknown roles raise instead of being silently dropped (Zephyr's original skips them).
ZEPHYR_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{{- '<|system|>\n' + message['content'] + eos_token + '\n' }}"
    "{%- elif message['role'] == 'user' %}"
    "{{- '<|user|>\n' + message['content'] + eos_token + '\n' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- '<|assistant|>\n' }}"
    "{%- generation %}{{- message['content'] + eos_token }}{%- endgeneration %}"
    "{{- '\n' }}"
    "{%- else %}"
    "{{- raise_exception('unknown chat role: ' + message['role'] + ' (expected system, user or assistant)') }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\n' }}{%- endif %}"
)
ROLES = ("system", "user", "assistant")


def chat_template_from(spec: str | None) -> str | None:
    """``zephyr`` -> the template above; a ``.jinja`` file -> its text; ``tokenizer`` or None -> keep the
    tokenizer's own (returns None)."""
    if spec in (None, "", "tokenizer"):
        return None
    if spec == "zephyr":
        return ZEPHYR_CHAT_TEMPLATE
    path = Path(spec)
    if path.suffix in (".jinja", ".j2"):
        if not path.is_file():
            raise FileNotFoundError(f"chat_template: file not found: {path}")
        return path.read_text(encoding="utf-8")
    raise ValueError(f"chat_template must be 'zephyr', 'tokenizer' or a .jinja file, got {spec!r}")


def has_generation_markers(template: str | None) -> bool:
    return template is not None and "generation" in template and "endgeneration" in template


def setup_tokenizer(name_or_path: str, *, chat_template: str | None = "zephyr", revision: str = "main",
                    trust_remote_code: bool = False):
    """The tokenizer every chat stage uses: chat template set, pad token set and distinct from EOS.

    The tokenizer is saved with the model (and with adapters), so the next stage and inference read both back.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision,
                                                  trust_remote_code=trust_remote_code)
    except OSError as e:
        hint = " (HF_HUB_OFFLINE is set: a Hub id must already be in the local cache)" if offline() else ""
        raise ValueError(f"model_name_or_path / tokenizer_name_or_path: cannot load the tokenizer of "
                         f"{name_or_path!r}{hint}: {str(e).splitlines()[0]}") from None
    if tokenizer.eos_token is None:
        raise ValueError(f"tokenizer of {name_or_path} has no EOS token; a chat model needs one to stop")
    template = chat_template_from(chat_template)
    if template is not None:
        tokenizer.chat_template = template
    elif not tokenizer.chat_template:
        raise ValueError(f"chat_template: 'tokenizer' asked for the tokenizer's own template, but {name_or_path} "
                         "has none; use chat_template: zephyr")
    set_pad_token(tokenizer, name_or_path)
    return tokenizer


def set_pad_token(tokenizer, name: str = "the tokenizer") -> None:
    """Make ``pad != eos``: keep a distinct pad token, else use ``<unk>`` (Llama-2's tokenizer has only
    unk/bos/eos; ``<unk>`` never occurs in byte-fallback tokenizations, and padded positions carry label -100)."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    if tokenizer.unk_token is not None and tokenizer.unk_token_id not in (tokenizer.eos_token_id, None):
        tokenizer.pad_token = tokenizer.unk_token
        return
    raise ValueError(
        f"{name}: no pad token distinct from EOS, and no <unk> to use instead. Padding with EOS would hide the EOS "
        "from the loss and the model would never learn to stop. Add a pad token to the tokenizer (and resize the "
        "model's embeddings) first."
    )


def prefix_mismatches(tokenizer, conversations: Iterable[list[dict]], limit: int = 64) -> list[int]:
    """Indices of conversations whose inference prompt (everything before the last assistant reply, plus the
    generation prompt) does not tokenize to a prefix of the training tokens.

    At such a boundary the model is trained on one token sequence and prompted with another. It happens when a
    tokenizer merges the generation prompt's last characters with the reply's first (Llama-2's tokenizer doesn't
    across "\\n"; small BPE vocabularies can).
    """
    bad = []
    for i, messages in enumerate(conversations):
        if i >= limit:
            break
        last = max((j for j, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            continue
        full = tokenizer.apply_chat_template(messages[: last + 1], tokenize=True, return_dict=True)["input_ids"]
        prompt = tokenizer.apply_chat_template(messages[:last], tokenize=True, add_generation_prompt=True,
                                               return_dict=True)["input_ids"]
        if full[: len(prompt)] != prompt:
            bad.append(i)
    return bad

