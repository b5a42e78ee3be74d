"""(c) Liger kernels (``use_liger_kernel``, applied by ``tinyllama.training.core.setup_model``): the loss of a packed
micro-batch equals the loss without them.

The model is first fitted to the batch for a few steps, so that its loss depends on which token each position is
asked to predict: on a freshly initialised model every loss is about ln(vocab), and a Liger loss that read the
labels shifted once more than the recipe's (``shift_labels``: targets already aligned) would go unnoticed. The test
measures that margin every run (the loss with targets shifted by one must be far off).

Tolerance: Liger's loss in bf16 autocast must be within twice the plain model's bf16 error of the fp32 loss, or 0.5%
of it, whichever is larger (bf16 keeps 8 significant bits, 2^-8 = 0.4% per rounding; the mean loss over a batch
averages most of that out, so 0.5% is already loose for a correct kernel and far below a wrong one).

Liger is applied to the model instance, but it also replaces functions of transformers' Llama module for every
model of the process (``apply_rotary_pos_emb``, ``LlamaRMSNorm``, ``LlamaMLP``): the plain and reference losses are
computed before, and those module globals are restored after.
"""

from __future__ import annotations

import importlib.util
import math
from types import SimpleNamespace

import pytest
import torch

from gpu_tier_utils import packed_batch, require


def recipe_args(use_liger_kernel: bool, attn: str) -> SimpleNamespace:
    return SimpleNamespace(model_config="demo", init_from=None, attn_implementation=attn, trust_remote_code=False,
                           seed=0, use_liger_kernel=use_liger_kernel, gradient_checkpointing=False,
                           init="tinyllama")


@pytest.mark.gpu
def test_liger_loss_equals_the_plain_loss(tier, record, monkeypatch):
    if not tier.cuda:
        pytest.skip("Liger's kernels are Triton kernels: CUDA only (the tier runs on CPU)")
    require("liger", None if importlib.util.find_spec("liger_kernel") else "liger-kernel is not installed")
    from transformers.models.llama import modeling_llama

    from tinyllama.model import resolve_attn_implementation
    from tinyllama.training.core import forward_loss, setup_model

    for name in ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP"):  # restored at teardown
        monkeypatch.setattr(modeling_llama, name, getattr(modeling_llama, name))
    attn = resolve_attn_implementation("auto")  # flash_attention_2 where it is installed: the recipe's default
    batch = packed_batch(4, 256)

    plain = setup_model(recipe_args(False, attn)).to("cuda").train()
    opt = torch.optim.AdamW(plain.parameters(), lr=3e-3)
    for _ in range(60):  # fit the batch (measured on CPU in fp32 after 40 steps: 8.35 -> 3.24; shifted: 3.90)
        with tier.autocast():
            loss = forward_loss(plain, batch, True, "cuda")
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    state = {k: v.detach().clone() for k, v in plain.state_dict().items()}

    ref = setup_model(recipe_args(False, "eager")).to("cuda").train()
    ref.load_state_dict(state)
    ids = batch["input_ids"].to("cuda")
    with torch.no_grad():
        loss_ref = forward_loss(ref, batch, True, "cuda").item()  # fp32, eager attention
        # the control: the same logits scored against targets one token later (labels shifted twice)
        logits = ref(input_ids=ids[:, :-1], position_ids=batch["position_ids"][:, :-1].to("cuda")).logits
        loss_shifted = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 2:].flatten()).item()
        with tier.autocast():
            loss_plain = forward_loss(plain, batch, True, "cuda").item()

    liger = setup_model(recipe_args(True, attn)).to("cuda").train()  # train mode: the fused loss path
    liger.load_state_dict(state)
    assert modeling_llama.apply_rotary_pos_emb.__module__.startswith("liger_kernel")
    assert liger.model.norm._get_name() == "LigerRMSNorm" and liger.model.layers[0].mlp._get_name() == "LigerSwiGLUMLP"
    outputs = {}
    liger.register_forward_hook(lambda m, a, o: outputs.update(out=o))
    with tier.autocast():
        loss = forward_loss(liger, batch, True, "cuda")
    loss.backward()  # as in training: the fused kernel computes its gradients in the forward
    loss_liger = loss.item()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in liger.parameters())
    # Liger's fused linear cross-entropy never materialises the logits; the plain forward would return them
    assert outputs["out"].logits is None, "Liger's fused linear cross-entropy did not run"

    bound = max(2 * abs(loss_plain - loss_ref), 5e-3 * loss_ref)
    record("losses", f"fp32 {loss_ref:.5f}, bf16 {loss_plain:.5f}, bf16 + Liger {loss_liger:.5f} "
                     f"(bound {bound:.3g}); targets shifted by one: {loss_shifted:.4f}")
    assert math.isfinite(loss_liger)
    assert abs(loss_shifted - loss_ref) > 20 * bound, "the fitted model does not tell aligned from shifted targets"
    assert abs(loss_liger - loss_ref) <= bound, (
        f"Liger's loss {loss_liger:.5f} differs from the fp32 loss {loss_ref:.5f} by more than {bound:.3g} "
        f"(bf16 without Liger: {loss_plain:.5f})")
