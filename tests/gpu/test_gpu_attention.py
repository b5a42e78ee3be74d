"""Attention kernels on the GPU path: each kernel's logits against a reference, and document masking under each
kernel through the recipe's own ``forward_loss``.

Tolerance (both tests): a kernel in the precision under test (bf16 autocast on a GPU, fp32 on CPU) is compared with
the same weights run in a higher precision (fp32 / float64) with plain eager attention. Its error must be at most
twice the error of sdpa (or of the same kernel on an unpacked input) in the same precision, plus one unit of
rounding at the logits' scale. The factor 2 is flash-attn's own acceptance rule for its kernels (its tests assert
``(out - out_ref).abs().max() <= 2 * (out_pt - out_ref).abs().max()`` against a PyTorch implementation in the same
low precision); here it is applied to a whole model's logits. An attention leak across documents or a wrong kernel
is orders of magnitude larger (the document masking test measures that margin every run).

The document masking check also compares the LOSS that ``forward_loss`` returns with the loss of the reference
logits against the sample's next tokens (every target, document boundaries included), so a regression on the loss
side (labels shifted twice, targets rolled) fails as well as an attention leak; the same logits scored against
targets one token later must be far off (measured every run). On CPU, torch_varlen (torch's FlashAttention varlen
kernel, CUDA only) runs ``gpu_tier_utils.reference_varlen_attn`` in place of the kernel: what is checked there is
everything around it (the document offsets ``model_inputs`` computes, the layout, grouped-query heads).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpu_tier_utils import (CPU_TIER, Capture, build, documents, packed_batch, reference_twin, reference_varlen_attn,
                            reference_varlen_attn_torch_2_10, require)

KERNELS = ["flash_attention_2", "torch_varlen", "sdpa", "flex_attention", "eager"]
LOGIT_GAIN = 30.0  # lm_head scaled up: peaked logits, so that the loss depends on which token is the target


def use_kernel(attn: str, tier, monkeypatch, reference=reference_varlen_attn) -> None:
    """Fail (or skip where the run allows it) when ``attn`` cannot run here; on CPU, torch_varlen runs
    ``reference`` in place of torch's CUDA kernel."""
    from tinyllama.model import attn_unavailable_reason

    if attn == "flash_attention_2" and not tier.cuda:
        pytest.skip("flash_attention_2 needs a CUDA device (the tier runs on CPU)")
    if attn == "torch_varlen" and not tier.cuda:
        varlen = pytest.importorskip("torch.nn.attention.varlen")
        monkeypatch.setattr(varlen, "varlen_attn", reference)
        return
    require(attn, attn_unavailable_reason(attn))


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.to(b.dtype) - b).abs().max().item()


@pytest.mark.gpu
@pytest.mark.parametrize("attn", ["flash_attention_2", "torch_varlen", "flex_attention", "eager"])
@torch.no_grad()
def test_attention_kernel_logits_agree_with_sdpa(attn, tier, record, monkeypatch):
    """(a) A small Llama's logits under ``attn`` are as close to the reference as sdpa's are."""
    use_kernel(attn, tier, monkeypatch)
    seq_len = 256 if tier.cuda else 64
    model = build(tier.small_model, attn, tier)
    sdpa = build(tier.small_model, "sdpa", tier)
    for (name, p), (_, q) in zip(model.state_dict().items(), sdpa.state_dict().items()):
        assert torch.equal(p, q), f"{name}: the twins do not share weights"
    ref = reference_twin(model, tier)
    ids = torch.randint(3, model.config.vocab_size, (2, seq_len), generator=torch.Generator().manual_seed(1))
    ids = ids.to(tier.device)
    expected = ref(input_ids=ids).logits
    with tier.autocast():
        got = model(input_ids=ids).logits
        baseline = sdpa(input_ids=ids).logits
    scale = expected.abs().max().item()
    err, err_sdpa = max_err(got, expected), max_err(baseline, expected)
    bound = 2 * err_sdpa + tier.ulp * scale
    record(f"{attn} max |logit error|", f"{err:.3g} (sdpa {err_sdpa:.3g}, bound {bound:.3g}, |logits| {scale:.3g})")
    assert got.dtype == baseline.dtype and got.shape == expected.shape
    assert err <= bound, f"{attn}: logit error {err:.3g} > {bound:.3g} (sdpa's own: {err_sdpa:.3g})"


def check_document_masking(attn: str, tier, record=None, micro_batch: int = 3) -> None:
    """Each document of a packed micro-batch, through ``forward_loss(document_masking=True)``, gets the logits it
    gets alone, and the loss is the reference loss; the same batch without document masking must differ by far
    more, and so must the reference logits scored against targets one token later (so both checks can fail). The
    inputs of both layouts (``model_inputs`` with and without ``varlen``) give the reference loss in the reference
    precision, whatever the kernel under test."""
    from tinyllama.training.core import forward_loss, model_inputs, packed_sequence_kwargs

    seq_len = 256 if tier.cuda else 64
    model = build(tier.small_model, attn, tier)
    with torch.no_grad():
        model.lm_head.weight.mul_(LOGIT_GAIN)
    ref = reference_twin(model, tier)
    vocab = model.config.vocab_size
    batch = packed_batch(micro_batch, seq_len, vocab)
    inputs, targets = batch["input_ids"][:, :-1], batch["input_ids"][:, 1:]
    capture = Capture(model)
    with torch.no_grad(), tier.autocast():
        loss = forward_loss(model, batch, True, tier.device).float().item()
        handed = capture.kwargs
        masked = capture.output.logits.float().reshape(-1, vocab)
        forward_loss(model, batch, False, tier.device)
        unmasked = capture.output.logits.float().reshape(-1, vocab)
    capture.remove()
    # What the model was handed: the samples' tokens and targets in order, position ids that restart at every
    # document, and for a varlen kernel the offsets of every document of the B*T tokens.
    assert torch.equal(handed["input_ids"].cpu(), inputs) and torch.equal(handed["shift_labels"].cpu(), targets)
    assert torch.equal(handed["position_ids"].cpu(), batch["position_ids"][:, :-1]), "position ids are not the loader's"
    docs = documents(batch)
    if attn in ("flash_attention_2", "torch_varlen"):
        starts = [row * seq_len + a for row, a, _ in docs]
        assert handed["cu_seq_lens_q"].cpu().tolist() == starts + [micro_batch * seq_len]
        assert handed["max_length_q"] == max(b - a for _, a, b in docs)
    else:
        assert not set(packed_sequence_kwargs(batch["position_ids"][:, :-1], "cpu")) & set(handed)

    err_masked = err_unmasked = err_alone = scale = 0.0
    assert len(docs) > micro_batch  # some sample holds several documents
    expected_rows, alone_rows = [], []
    for row, a, b in docs:
        doc = inputs[row:row + 1, a:b].to(tier.device)
        with torch.no_grad():
            expected = ref(input_ids=doc).logits[0]
            with tier.autocast():
                alone = model(input_ids=doc).logits[0]
        expected_rows.append(expected.double())
        alone_rows.append(alone.double())
        flat = slice(row * seq_len + a, row * seq_len + b)
        err_masked = max(err_masked, max_err(masked[flat], expected))
        err_alone = max(err_alone, max_err(alone, expected))
        scale = max(scale, expected.abs().max().item())
        if a > 0:  # a later document of a sample: without masking it sees the documents before it
            err_unmasked = max(err_unmasked, max_err(unmasked[flat], expected))
    bound = 2 * err_alone + tier.ulp * scale

    # the loss: the mean over all B*T targets (a document's last token predicts the next document's first)
    expected_logits = torch.cat(expected_rows).reshape(micro_batch, seq_len, vocab)
    flat_targets = targets.to(tier.device)
    loss_ref = F.cross_entropy(expected_logits.flatten(0, 1), flat_targets.flatten()).item()
    loss_alone = F.cross_entropy(torch.cat(alone_rows), flat_targets.flatten()).item()
    loss_shifted = F.cross_entropy(expected_logits[:, :-1].flatten(0, 1), flat_targets[:, 1:].flatten()).item()
    loss_bound = 2 * abs(loss_alone - loss_ref) + tier.ulp * abs(loss_ref)
    # The loss side alone, in the reference precision (so the bound is tight enough to see one shifted target):
    # the reference twin handed what model_inputs gives either layout (eager reads the position ids and ignores
    # the document offsets) must return the reference loss.
    tight = 1e-4 * abs(loss_ref)
    with torch.no_grad():
        ref_losses = {varlen: ref(**model_inputs(batch, True, tier.device, varlen)).loss.item()
                      for varlen in (False, True)}
    if record:
        record(f"{attn} packed micro-batch {micro_batch}: max |logit error|",
               f"{err_masked:.3g} (alone {err_alone:.3g}, bound {bound:.3g}; unmasked {err_unmasked:.3g})")
        record(f"{attn} packed micro-batch {micro_batch}: loss", f"{loss:.6f} (reference {loss_ref:.6f}, bound "
                                                                f"{loss_bound:.3g}; targets shifted {loss_shifted:.4f}, bound {tight:.3g})")
    assert err_unmasked > 20 * bound, f"the check cannot tell a leak ({err_unmasked:.3g}) from rounding ({bound:.3g})"
    assert err_masked <= bound, (
        f"{attn}, micro batch {micro_batch}: a packed document's logits differ from the document alone by "
        f"{err_masked:.3g} > {bound:.3g}: attention crosses document boundaries")
    assert abs(loss_shifted - loss_ref) > 20 * tight, "the check cannot tell shifted targets from rounding"
    for varlen, got in ref_losses.items():
        assert abs(got - loss_ref) <= tight, (
            f"model_inputs(varlen={varlen}) hands the model the wrong targets: loss {got:.6f}, expected {loss_ref:.6f}")
    assert abs(loss - loss_ref) <= loss_bound, (
        f"{attn}: forward_loss returned {loss:.6f}, the reference loss is {loss_ref:.6f} (bound {loss_bound:.3g}): "
        "the model was handed the wrong targets")


@pytest.mark.gpu
@pytest.mark.parametrize("attn", KERNELS)
def test_document_masking_isolates_documents(attn, tier, record, monkeypatch):
    """(b) Document masking under every attention kernel, micro batch 3, through the recipe's forward_loss."""
    use_kernel(attn, tier, monkeypatch)  # (flex_attention runs on CPU too: forward only, which is all this needs)
    check_document_masking(attn, tier, record)


@pytest.mark.parametrize("attn, reference", [("sdpa", None), ("eager", None), ("torch_varlen", reference_varlen_attn),
                                             ("torch_varlen", reference_varlen_attn_torch_2_10)],
                         ids=["sdpa", "eager", "torch_varlen", "torch_varlen-torch-2.10-signature"])
def test_document_masking_isolates_documents_on_cpu_quick(attn, reference, monkeypatch):
    """The CPU part of the tier that the default suite runs (about a second each): the same check, tiny model; and
    the varlen path (document offsets handed to the kernel) through the CPU reference of torch's kernel, with the
    signature of torch >= 2.12 and of torch 2.10 (no grouped-query heads: the key/value heads are repeated)."""
    use_kernel(attn, CPU_TIER, monkeypatch, reference)
    check_document_masking(attn, CPU_TIER)
