"""Attention kernels on the GPU path: each kernel's logits against a reference, and document masking under each
kernel through the recipe's own ``forward_loss``.

Tolerance (both tests): a kernel in the precision under test (bf16 autocast on a GPU, fp32 on CPU) is compared with
the same weights run in a higher precision (fp32 / float64) with plain eager attention. Its error must be at most
twice the error of sdpa (or of the same kernel on an unpacked input) in the same precision, plus one unit of
rounding at the logits' scale. The factor 2 is flash-attn's own acceptance rule for its kernels (its tests assert
``(out - out_ref).abs().max() <= 2 * (out_pt - out_ref).abs().max()`` against a PyTorch implementation in the same
low precision); here it is applied to a whole model's logits. An attention leak across documents or a wrong kernel
is orders of magnitude larger (the document masking test measures that margin every run).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from gpu_tier_utils import CPU_TIER, Capture, build, documents, packed_batch, reference_twin

KERNELS = ["flash_attention_2", "sdpa", "flex_attention", "eager"]


def skip_if_unavailable(attn: str, tier) -> None:
    if attn == "flash_attention_2":
        if not tier.cuda:
            pytest.skip("flash_attention_2 needs a CUDA device (the tier runs on CPU)")
        from tinyllama.model import flash_attn_unavailable_reason

        if reason := flash_attn_unavailable_reason():
            pytest.skip(f"flash_attention_2: {reason}")
    if attn == "flex_attention" and importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
        pytest.skip("this torch has no flex_attention")


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.to(b.dtype) - b).abs().max().item()


@pytest.mark.gpu
@pytest.mark.parametrize("attn", ["flash_attention_2", "flex_attention", "eager"])
@torch.no_grad()
def test_attention_kernel_logits_agree_with_sdpa(attn, tier, record):
    """(a) A small Llama's logits under ``attn`` are as close to the reference as sdpa's are."""
    skip_if_unavailable(attn, tier)
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


def check_document_masking(attn: str, tier, record=None, micro_batch: int = 3, flattened: bool = False) -> None:
    """Each document of a packed micro-batch, through ``forward_loss(document_masking=True)``, gets the logits it
    gets alone; the same batch without document masking must differ by far more (so the check can fail).
    ``flattened``: hand the model the flash-attention layout (``model_inputs(..., varlen=True)``: the samples as one
    row of B*T tokens) whatever the kernel, so that layout is checked on CPU too."""
    from tinyllama.training.core import forward_loss, model_inputs

    if flattened:
        def forward_loss(model, batch, document_masking, device):  # noqa: F811 (the recipe's, with varlen forced)
            return model(**model_inputs(batch, document_masking, device, varlen=document_masking)).loss

    seq_len = 256 if tier.cuda else 64
    model = build(tier.small_model, attn, tier)
    ref = reference_twin(model, tier)
    batch = packed_batch(micro_batch, seq_len, model.config.vocab_size)
    inputs = batch["input_ids"][:, :-1]
    capture = Capture(model)
    with torch.no_grad(), tier.autocast():
        forward_loss(model, batch, True, tier.device)
        handed = capture.kwargs
        masked = capture.output.logits.float().reshape(-1, model.config.vocab_size)
        forward_loss(model, batch, False, tier.device)
        unmasked = capture.output.logits.float().reshape(-1, model.config.vocab_size)
    capture.remove()
    # What the model was handed, whatever its shape ([B, T] per sample, or the B samples flattened to [1, B*T]):
    # the samples' tokens in order, and position ids that restart at every document.
    assert torch.equal(handed["input_ids"].cpu().reshape(-1), inputs.reshape(-1))
    if attn.startswith("flash"):  # flash attention sees packing only in one row: the samples flattened to [1, B*T]
        assert tuple(handed["input_ids"].shape) == (1, inputs.numel()), tuple(handed["input_ids"].shape)
    positions = handed["position_ids"].cpu().reshape(-1)
    assert torch.equal(positions, batch["position_ids"][:, :-1].reshape(-1)), "position ids are not the loader's"

    err_masked = err_unmasked = err_alone = scale = 0.0
    docs = documents(batch)
    assert len(docs) > micro_batch  # some sample holds several documents
    for row, a, b in docs:
        doc = inputs[row:row + 1, a:b].to(tier.device)
        with torch.no_grad():
            expected = ref(input_ids=doc).logits[0]
            with tier.autocast():
                alone = model(input_ids=doc).logits[0]
        flat = slice(row * seq_len + a, row * seq_len + b)
        err_masked = max(err_masked, max_err(masked[flat], expected))
        err_alone = max(err_alone, max_err(alone, expected))
        scale = max(scale, expected.abs().max().item())
        if a > 0:  # a later document of a sample: without masking it sees the documents before it
            err_unmasked = max(err_unmasked, max_err(unmasked[flat], expected))
    bound = 2 * err_alone + tier.ulp * scale
    if record:
        record(f"{attn} packed micro-batch {micro_batch}: max |logit error|",
               f"{err_masked:.3g} (alone {err_alone:.3g}, bound {bound:.3g}; unmasked {err_unmasked:.3g})")
    assert err_unmasked > 20 * bound, f"the check cannot tell a leak ({err_unmasked:.3g}) from rounding ({bound:.3g})"
    assert err_masked <= bound, (
        f"{attn}, micro batch {micro_batch}: a packed document's logits differ from the document alone by "
        f"{err_masked:.3g} > {bound:.3g}: attention crosses document boundaries")


@pytest.mark.gpu
@pytest.mark.parametrize("attn", KERNELS)
def test_document_masking_isolates_documents(attn, tier, record):
    """(b) Document masking under every attention kernel, micro batch 3, through the recipe's forward_loss."""
    skip_if_unavailable(attn, tier)  # (flex_attention runs on CPU too: forward only, which is all this needs)
    check_document_masking(attn, tier, record)


@pytest.mark.parametrize("attn, flattened", [("sdpa", False), ("eager", False), ("sdpa", True)])
def test_document_masking_isolates_documents_on_cpu_quick(attn, flattened):
    """The CPU part of the tier that the default suite runs (about a second each): the same check, tiny model; and
    the flash-attention layout (samples flattened to one row) through sdpa, which reads the same position ids."""
    check_document_masking(attn, CPU_TIER, flattened=flattened)
