"""AdamW with TinyLlama's hyperparameters and the two usual weight-decay policies."""

from __future__ import annotations

import torch


def parameter_groups(model: torch.nn.Module, weight_decay: float, exclude_norm_and_embeddings: bool) -> list[dict]:
    """TinyLlama decayed every parameter (one group). The other policy (GPT-3, OLMo, most recipes) leaves norms,
    biases and embeddings undecayed: every parameter with fewer than 2 dims, and the embedding tables."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not exclude_norm_and_embeddings:
        return [{"params": [p for _, p in params], "weight_decay": weight_decay}]
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    no_decay = [p for _, p in params if p.ndim < 2 or id(p) in embedding_ids]
    no_decay_ids = {id(p) for p in no_decay}
    decay = [p for _, p in params if id(p) not in no_decay_ids]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, args) -> torch.optim.Optimizer:
    groups = parameter_groups(model, args.weight_decay, args.no_decay_norm_and_embeddings)
    fused = torch.cuda.is_available() and all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                             eps=args.adam_epsilon, fused=fused or None)
