# Copyright 2025 the tinyllama-recipes authors. Apache-2.0.
"""Held-out perplexity and bits per byte of a causal language model, as a Hugging Face ``evaluate`` metric.

Load it from its folder (works offline, nothing is downloaded)::

    import evaluate
    metric = evaluate.load("evaluation/metrics/perplexity_bpb")
    metric.compute(predictions=texts, model_id="outputs/run/export/final")          # a folder or a Hub id
    metric.compute(predictions=texts, model=model, tokenizer=tokenizer)              # an already loaded model

Corpus-level, token-weighted (unlike evaluate's ``perplexity``, which averages per-text perplexities):

- ``nll_per_token`` = total negative log-likelihood (nats) / predicted tokens;
- ``perplexity``    = exp(nll_per_token): depends on the tokenizer;
- ``bits_per_byte`` = total NLL / ln 2 / UTF-8 bytes of the texts: comparable across tokenizers.

Each text is tokenized without special tokens and prefixed with the tokenizer's BOS (else EOS) token, so every
one of its tokens is predicted exactly once and the NLL covers all of its bytes. A text longer than the
window (``max_length``, default the model's context) is scored in windows that advance by ``stride`` tokens
(default: the window minus one), each window re-reading the tokens before it as context.
"""

import math

import datasets
import evaluate

_CITATION = """\
@misc{gao2020pile,
  title={The Pile: An 800GB Dataset of Diverse Text for Language Modeling},
  author={Gao, Leo and others}, year={2020}, eprint={2101.00027}, archivePrefix={arXiv}
}
"""

_DESCRIPTION = """\
Corpus-level perplexity and bits per byte (total NLL in nats / ln 2 / total UTF-8 bytes; the Pile's
tokenizer-independent measure) of a causal LM on a list of texts.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): the texts to score.
    model_id (str): model folder or Hub id (or pass model= and tokenizer= instead).
    model: an already loaded causal LM (optional). tokenizer: its tokenizer (with model=).
    batch_size (int): windows per forward pass. Default 8.
    max_length (int): window in tokens. Default: the model's max_position_embeddings (at most 4096).
    stride (int): tokens a window advances; default max_length - 1 (no overlap beyond one context token).
    add_start_token (bool): prefix BOS so the first token is predicted too. Default True.
    device (str): default cuda when available, else cpu. dtype: torch dtype for model_id loading (float32).
Returns:
    perplexity, bits_per_byte, nll_per_token (nats), num_tokens (predicted), num_bytes, num_texts
Examples:
    >>> metric = evaluate.load("evaluation/metrics/perplexity_bpb")
    >>> metric.compute(predictions=["Hello world"], model_id="gpt2")  # doctest: +SKIP
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PerplexityBpb(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
            reference_urls=["https://arxiv.org/abs/2101.00027"],
        )

    def _compute(self, predictions, model_id=None, model=None, tokenizer=None, batch_size=8, max_length=None,
                 stride=None, add_start_token=True, device=None, dtype=None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if model is None:
            if model_id is None:
                raise ValueError("perplexity_bpb needs model_id= (a folder or Hub id) or model= and tokenizer=")
            model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype or torch.float32)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_id)
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            model.to(device)
        elif tokenizer is None:
            raise ValueError("perplexity_bpb: pass tokenizer= with model=")
        device = torch.device(device) if device is not None else next(model.parameters()).device
        if max_length is None:
            max_length = min(int(getattr(model.config, "max_position_embeddings", 2048) or 2048), 4096)
        if max_length < 2:
            raise ValueError("max_length must be at least 2")
        stride = min(stride or max_length - 1, max_length - 1)
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if add_start_token and start is None:
            raise ValueError("the tokenizer has neither a BOS nor an EOS token: use add_start_token=False")

        # Windows (input ids, number of leading positions that are context only), over all texts.
        windows, num_tokens, num_bytes = [], 0, 0
        for text in predictions:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if add_start_token:
                ids = [start] + ids
            num_bytes += len(text.encode("utf-8"))
            scored_until = 1  # position 0 is never predicted
            while scored_until < len(ids):
                end = min(scored_until + stride, len(ids))
                begin = max(0, end - max_length)
                windows.append((ids[begin:end], scored_until - begin))
                num_tokens += end - scored_until
                scored_until = end

        total_nll = 0.0
        was_training = model.training
        model.eval()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        with torch.no_grad():
            for i in range(0, len(windows), batch_size):
                batch = windows[i:i + batch_size]
                width = max(len(w) for w, _ in batch)
                input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                labels = torch.full((len(batch), width), -100, dtype=torch.long)
                for j, (w, context) in enumerate(batch):
                    input_ids[j, :len(w)] = torch.tensor(w)
                    attention[j, :len(w)] = 1
                    labels[j, context:len(w)] = torch.tensor(w[context:])
                input_ids, attention, labels = input_ids.to(device), attention.to(device), labels.to(device)
                logits = model(input_ids=input_ids, attention_mask=attention).logits.float()
                nll = torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                    ignore_index=-100, reduction="sum")
                total_nll += nll.item()
        if was_training:
            model.train()
        if num_tokens == 0:
            raise ValueError("nothing to score: every text is empty")
        nll_per_token = total_nll / num_tokens
        return {
            "perplexity": math.exp(nll_per_token),
            "bits_per_byte": total_nll / math.log(2) / max(num_bytes, 1),
            "nll_per_token": nll_per_token,
            "num_tokens": num_tokens,
            "num_bytes": num_bytes,
            "num_texts": len(predictions),
        }
