"""One held-out preference measure for every method: on held-out pairs, the mean log-probability per reply token
(the reply up to and including its EOS) of the chosen reply minus that of the rejected one, and the share of pairs
where the chosen reply is the likelier by that measure. Per token, because replies differ in length and a sum would
favour the shorter reply whatever the model learned (in the demo's pairs a long friendly greeting against a short
refusal). TRL's own metrics differ by method (DPO and KTO report rewards against the reference, ORPO and SimPO
scaled log-probabilities of the policy alone), so they cannot compare methods, nor a run with the model it started
from; this can. The recipes write it before and after training (``heldout/*`` in
``summary.json`` and the card) for every preference method, on the evaluation split.

Distillation has its own (:func:`heldout_distillation`): how far the student's next-token distribution is from the
teacher's on held-out conversations, before and after.
"""

from __future__ import annotations


def reply_token_ids(tokenizer, prompt: list[dict], reply: list[dict]) -> tuple[list[int], list[int]]:
    """(prompt ids, reply ids) as the chat template tokenizes them; the reply ends at its first EOS (what the
    template renders after it belongs to the next turn)."""
    prompt_ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                               return_dict=True)["input_ids"]
    full = tokenizer.apply_chat_template(prompt + reply, tokenize=True, return_dict=True)["input_ids"]
    start = next((i for i, (a, b) in enumerate(zip(prompt_ids, full)) if a != b), min(len(prompt_ids), len(full)))
    ids = full[start:]
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id) + 1]
    return full[:start], ids



def padded_batches(sequences, pad_id: int, batch_size: int, device):
    """``(input_ids, attention_mask, reply mask)`` on ``device``, ``batch_size`` sequences at a time, right-padded
    with ``pad_id``; ``sequences``: ``(token ids, index where the reply starts)``."""
    import torch

    for i in range(0, len(sequences), batch_size):
        chunk = sequences[i: i + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        reply = torch.zeros((len(chunk), width), dtype=torch.bool)
        for j, (ids, start) in enumerate(chunk):
            input_ids[j, : len(ids)] = torch.tensor(ids)
            attention[j, : len(ids)] = 1
            reply[j, start: len(ids)] = True
        yield input_ids.to(device), attention.to(device), reply.to(device)

def heldout_preference(model, tokenizer, pairs, *, max_length: int | None = None,
                       max_prompt_length: int | None = None, batch_size: int = 8, context=None) -> dict:
    """``{"heldout/logp_margin": mean over pairs of (mean token logp of chosen - of rejected), "heldout/pair_accuracy":
    share of pairs where that difference is positive}`` over ``pairs`` (rows with conversational ``prompt``,
    ``chosen``, ``rejected``, as :func:`tinyllama.chat.prepare_preference_dataset` returns them). Prompts keep their
    last ``max_prompt_length`` tokens, then sequences are cut to ``max_length`` (as in training). Every process of a distributed run must call it
    (ZeRO-3 gathers the weights in each forward); each computes the same numbers. ``context``: a callable returning
    the autocast context training used (``Trainer.autocast_smart_context_manager``)."""
    import contextlib

    import torch

    sequences = []  # (token ids, index where the reply starts), chosen then rejected for each pair
    for row in pairs:
        for side in ("chosen", "rejected"):
            prompt, reply = reply_token_ids(tokenizer, row["prompt"], row[side])
            if max_prompt_length is not None:
                prompt = prompt[-max_prompt_length:]
            ids = (prompt + reply)[:max_length] if max_length else prompt + reply
            sequences.append((ids, len(prompt)))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logps, lengths = [], []
    try:
        with torch.no_grad(), (context() if context else contextlib.nullcontext()):
            for input_ids, attention, reply in padded_batches(sequences, tokenizer.pad_token_id, batch_size, device):
                logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits.float()
                token_logps = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None])[..., 0]
                logps += (token_logps * reply[:, 1:]).sum(-1).tolist()
                lengths += reply[:, 1:].sum(-1).tolist()
    finally:
        model.train(was_training)
    per_token = [logp / max(n, 1) for logp, n in zip(logps, lengths)]
    margins = [c - r for c, r in zip(per_token[0::2], per_token[1::2])]
    n = max(len(margins), 1)
    return {"heldout/logp_margin": sum(margins) / n, "heldout/pair_accuracy": sum(m > 0 for m in margins) / n}


def heldout_distillation(student, teacher, tokenizer, rows, *, max_prompt_length: int | None = None,
                         max_completion_length: int | None = None, batch_size: int = 8, context=None) -> dict:
    """The distillation method's held-out measure: on held-out conversations (rows with conversational ``prompt``
    and ``completion``, as :func:`tinyllama.chat.prepare_prompt_dataset` returns them), the mean per reply token
    (the dataset's reply up to its EOS, teacher-forced, so the same tokens before and after training) of
    ``KL(teacher || student)`` (``heldout/kl_teacher_student``, forward: TRL's ``beta: 0``) and
    ``KL(student || teacher)`` (``heldout/kl_student_teacher``, reverse: ``beta: 1``, TRL's default), in nats, at
    temperature 1. Prompts keep their last ``max_prompt_length`` tokens, replies their first
    ``max_completion_length`` (as in training). Every process of a distributed run must call it."""
    import contextlib

    import torch

    sequences = []
    for row in rows:
        prompt, reply = reply_token_ids(tokenizer, row["prompt"], row["completion"])
        if max_prompt_length is not None:
            prompt = prompt[-max_prompt_length:]
        if max_completion_length is not None:
            reply = reply[:max_completion_length]
        sequences.append((prompt + reply, len(prompt)))
    device = next(student.parameters()).device
    modes = student.training, teacher.training
    student.eval()
    teacher.eval()
    forward = backward = tokens = 0.0
    try:
        with torch.no_grad(), (context() if context else contextlib.nullcontext()):
            for input_ids, attention, reply in padded_batches(sequences, tokenizer.pad_token_id, batch_size, device):
                predicts = reply[:, 1:]  # the positions whose next token is a reply token
                logp = [torch.log_softmax(m(input_ids=input_ids, attention_mask=attention, use_cache=False)
                                          .logits[:, :-1][predicts].float(), -1) for m in (student, teacher)]
                s, t = logp
                forward += (t.exp() * (t - s)).sum().item()
                backward += (s.exp() * (s - t)).sum().item()
                tokens += predicts.sum().item()
    finally:
        student.train(modes[0])
        teacher.train(modes[1])
    n = max(tokens, 1)
    return {"heldout/kl_teacher_student": forward / n, "heldout/kl_student_teacher": backward / n}
