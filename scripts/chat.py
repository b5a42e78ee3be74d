"""Chat with a model in the terminal, through the chat template saved with it.

    python scripts/chat.py outputs/tinyllama-chat-dpo                       # interactive, streamed
    python scripts/chat.py TinyLlama/TinyLlama-1.1B-Chat-v1.0 --system "You are a pirate."
    python scripts/chat.py outputs/sft-demo --prompt "What is 2 plus 3?" --temperature 0   # one-shot, for scripts
    python scripts/chat.py meta-llama/Llama-2-7b-chat-hf --draft TinyLlama/TinyLlama-1.1B-Chat-v1.0   # drafted
    python scripts/chat.py outputs/sft-demo --prompt_lookup 10                   # prompt-lookup decoding

MODEL is a model folder, a Hub id, or a LoRA adapter folder (loaded onto its base). The prompt is built by the
tokenizer's chat template - the one training used and saved - over the whole history, so every turn is formatted
exactly as in training. Interactive commands: /reset (clear the history), /system TEXT (set the system prompt and
reset), /exit. One-shot mode prints only the reply on stdout, and on stderr how many tokens were generated and
why generation stopped (EOS or max_new_tokens).

Speculative decoding (transformers' assisted generation): ``--draft MODEL`` lets a small model of the same tokenizer
(TinyLlama for a Llama-2 7B, TinyLlama python-v0.1 for CodeLlama-7B) propose tokens that the model checks in one
forward pass; ``--prompt_lookup N`` proposes up to N tokens copied from the prompt instead (no draft model). With
greedy decoding (``--temperature 0``) the reply is the same token for token as without them (tests/test_chat.py);
with sampling it follows the same distribution. The one-shot summary then also says how many forward passes of the
model the reply took.
"""

from __future__ import annotations

import argparse
import sys

from tinyllama.chat import ForwardCounter, check_model_source, chat_template_from, is_adapter_dir
from tinyllama.utils import entry_point


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model folder, Hub id, or LoRA adapter folder")
    p.add_argument("--prompt", help="one-shot: answer this message, print the reply and exit")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--temperature", type=float, default=0.7, help="0 means greedy decoding (default 0.7)")
    p.add_argument("--top_p", type=float, default=0.9, help="nucleus sampling (default 0.9)")
    p.add_argument("--top_k", type=int, default=50)
    p.add_argument("--repetition_penalty", type=float, default=1.0)
    p.add_argument("--max_new_tokens", type=int, default=512)
    p.add_argument("--seed", type=int, default=None, help="sampling seed (reproducible replies)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--chat_template", default=None,
                   help="override the model's template: 'zephyr' or a .jinja file (default: the model's own)")
    p.add_argument("--revision", default=None, help="Hub revision of MODEL")
    p.add_argument("--draft", default=None,
                   help="speculative decoding: a small model folder or Hub id with the same tokenizer as MODEL")
    p.add_argument("--prompt_lookup", type=int, default=None, metavar="N",
                   help="prompt-lookup decoding: propose up to N tokens copied from the prompt (no draft model)")
    args = p.parse_args(argv)
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.max_new_tokens < 1:
        p.error("need temperature >= 0, 0 < top_p <= 1 and max_new_tokens >= 1")
    if args.draft and args.prompt_lookup:
        p.error("--draft and --prompt_lookup are two ways of proposing tokens: give one")
    if args.prompt_lookup is not None and args.prompt_lookup < 1:
        p.error("--prompt_lookup N needs N >= 1")
    return args


def load(model_name: str, *, device: str = "auto", dtype: str = "auto", chat_template: str | None = None,
         revision: str | None = None):
    """(model, tokenizer) ready to chat: eval mode, on ``device``, with a chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the middle of a chat
    check_model_source(model_name, "MODEL", allow_adapter=True)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"
    tokenizer = AutoTokenizer.from_pretrained(model_name, revision=revision)
    template = chat_template_from(chat_template)
    if template is not None:
        tokenizer.chat_template = template
    if not tokenizer.chat_template:
        raise ValueError(f"{model_name} has no chat template (a base model?). Fine-tune it with recipes/sft.py, "
                         "or pass --chat_template zephyr")
    if is_adapter_dir(model_name):
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(model_name, dtype=getattr(torch, dtype))
    else:
        model = AutoModelForCausalLM.from_pretrained(model_name, dtype=getattr(torch, dtype), revision=revision)
    return model.to(device).eval(), tokenizer


def load_draft(draft_name: str, model, tokenizer):
    """The draft model for assisted generation, on the model's device and dtype; refused (before any generation)
    unless its tokenizer maps every token to the same id as the model's: the draft proposes ids, and ids from
    another vocabulary would be checked, and rejected, as if they were the model's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_source(draft_name, "--draft")
    draft_tokenizer = AutoTokenizer.from_pretrained(draft_name)
    if draft_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"the draft {draft_name} has a different tokenizer from the model (vocabularies of "
                         f"{len(draft_tokenizer)} and {len(tokenizer)} tokens, or other ids): a draft must share "
                         "the model's tokenizer (TinyLlama drafts for Llama-2 models and CodeLlama)")
    draft = AutoModelForCausalLM.from_pretrained(draft_name, dtype=model.dtype)
    return draft.to(model.device).eval()


def fit_context(tokenizer, messages: list[dict], budget: int) -> list[dict]:
    """Drop the oldest exchanges (never the system prompt or the last user turn) until the prompt fits."""
    messages = list(messages)
    while True:
        n = len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"])
        first = 1 if messages and messages[0]["role"] == "system" else 0
        if n <= budget or len(messages) - first <= 1:
            return messages
        del messages[first:first + 2]


def reply(model, tokenizer, messages: list[dict], *, temperature: float = 0.7, top_p: float = 0.9, top_k: int = 50,
          repetition_penalty: float = 1.0, max_new_tokens: int = 512, stream: bool = True, draft=None,
          prompt_lookup: int | None = None) -> tuple[str, bool, int]:
    """Generate the assistant's next turn (drafted by ``draft``, or by ``prompt_lookup`` tokens copied from the
    prompt, if given). Returns (text, stopped at EOS, tokens generated)."""
    import torch
    from transformers import TextStreamer

    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt").to(model.device)
    sampling = temperature > 0
    kwargs = dict(do_sample=sampling, max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if draft is not None:
        kwargs["assistant_model"] = draft
    if prompt_lookup:
        kwargs["prompt_lookup_num_tokens"] = prompt_lookup
    if sampling:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k)
    else:  # greedy: unset the sampling defaults a generation_config may carry, so transformers does not warn
        kwargs.update(temperature=None, top_p=None, top_k=None)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    with torch.inference_mode():
        out = model.generate(**inputs, streamer=streamer, **kwargs)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    stopped = bool(new) and new[-1] == tokenizer.eos_token_id
    return tokenizer.decode(new, skip_special_tokens=True).strip(), stopped, len(new)


@entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.seed is not None:
        torch.manual_seed(args.seed)
    model, tokenizer = load(args.model, device=args.device, dtype=args.dtype, chat_template=args.chat_template,
                            revision=args.revision)
    draft = load_draft(args.draft, model, tokenizer) if args.draft else None
    limit = getattr(model.config, "max_position_embeddings", None) or 2048
    budget = max(16, limit - args.max_new_tokens)
    gen = dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
               repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens, draft=draft,
               prompt_lookup=args.prompt_lookup)
    system = [{"role": "system", "content": args.system}] if args.system else []

    if args.prompt is not None:
        messages = fit_context(tokenizer, system + [{"role": "user", "content": args.prompt}], budget)
        counter = ForwardCounter(model)
        _, stopped, n = reply(model, tokenizer, messages, **gen)  # the streamer prints the reply and a newline
        counter.remove()
        print(f"[{n} tokens, stopped at {'EOS' if stopped else 'max_new_tokens'}; {counter.calls} forward passes "
              "of the model]", file=sys.stderr)
        return 0

    print(f"Chatting with {args.model} ({model.device}). /reset clears the history, /system TEXT sets the system "
          "prompt, /exit quits.", file=sys.stderr)
    history: list[dict] = []
    while True:
        try:
            line = input("\n>>> ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            history = []
            print("(history cleared)", file=sys.stderr)
            continue
        if line.startswith("/system"):
            text = line[len("/system"):].strip()
            system = [{"role": "system", "content": text}] if text else []
            history = []
            print(f"(system prompt {'set' if text else 'cleared'}; history cleared)", file=sys.stderr)
            continue
        history.append({"role": "user", "content": line})
        messages = fit_context(tokenizer, system + history, budget)
        history = messages[len(system):]
        try:
            text, stopped, _ = reply(model, tokenizer, messages, **gen)
        except KeyboardInterrupt:
            history.pop()
            print("\n(interrupted)", file=sys.stderr)
            continue
        if not stopped:
            print(f"(reply cut at max_new_tokens={args.max_new_tokens})", file=sys.stderr)
        history.append({"role": "assistant", "content": text})


if __name__ == "__main__":
    sys.exit(main())
