"""(f) QLoRA: configs/chat/sft-qlora.yaml (4-bit NF4 base with double quantization through bitsandbytes, LoRA r 64 on
every linear layer, bf16, activation checkpointing) on the chat demo's base model folder and conversations, for 3
steps through recipes/sft.py's own main(): finite losses, a quantized base, only adapter parameters trainable, and
the saved adapter loads onto the base with the trained weights; the adapters train in bf16 (docs/chat.md).

With TINYLLAMA_GPU_TIER_ON_CPU=1 the same run without the quantization (bitsandbytes quantizes on CUDA only, and
the recipe refuses load_in_4bit without it): LoRA in fp32, which proves the rest of the test.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from gpu_tier_utils import require
from pretrain_utils import REPO, load_script


@pytest.mark.gpu
def test_qlora_trains_and_saves_an_adapter_that_loads(demo_paths, tmp_path, tier, record, monkeypatch):
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from tinyllama.chat import ensure_demo_assets

    quantized = tier.cuda
    if quantized:
        require("bitsandbytes", None if importlib.util.find_spec("bitsandbytes") else "bitsandbytes is not installed")
    base, data = REPO / "data/demo/chat/base", REPO / "data/demo/chat/ultrachat_200k"
    ensure_demo_assets(str(base), str(data))
    out = tmp_path / "adapter"
    argv = ["--config", str(REPO / "configs/chat/sft-qlora.yaml"), "--model_name_or_path", str(base),
            "--dataset_name", str(data), "--output_dir", str(out), "--max_steps", "3", "--max_train_samples", "64",
            "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--max_length", "256",
            "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "1", "--report_to", "none",
            "--disable_tqdm", "true", "--push_to_hub", "false"]
    if not quantized:
        argv += ["--load_in_4bit", "false", "--bf16", "false", "--dtype", "float32",
                 "--dataloader_pin_memory", "false"]
    sft = load_script("recipes/sft.py")
    built = {}
    original_build = sft.build_trainer

    def build_trainer(*args, **kwargs):
        built["trainer"] = original_build(*args, **kwargs)
        return built["trainer"]

    monkeypatch.setattr(sft, "build_trainer", build_trainer)
    result = sft.main(argv)
    trainer = built.pop("trainer")
    model = trainer.model

    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    record("losses", losses)
    assert result["train_steps"] == 3 and len(losses) == 3 and all(math.isfinite(x) for x in losses)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable), [n for n in trainable if "lora_" not in n]
    lora_linears = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trainable}
    assert lora_linears == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    if quantized:
        import bitsandbytes as bnb

        four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        record("4-bit linear layers", len(four_bit))
        assert four_bit and all(m.weight.quant_type == "nf4" for m in four_bit)
        assert all(m.weight.quant_state.nested for m in four_bit)  # use_bnb_nested_quant: double quantization
        # the adapters train in bf16 (TRL's cast for a 4-bit base), as docs/chat.md and sft-qlora.yaml say
        assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.bfloat16}
    trained = {k: v.detach().float().cpu() for k, v in get_peft_model_state_dict(model).items()}
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in trained.items())  # (B starts at 0)

    # the saved adapter loads onto the (unquantized) base, with the trained weights, and computes a finite loss
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
                                       str(out)).to(tier.device)
    saved = {k: v.float().cpu() for k, v in get_peft_model_state_dict(loaded).items()}
    assert saved.keys() == trained.keys()
    for k in saved:
        torch.testing.assert_close(saved[k], trained[k], rtol=0, atol=0)
    ids = torch.arange(3, 67, device=tier.device)[None]
    with torch.no_grad():
        assert math.isfinite(loaded(input_ids=ids, labels=ids).loss.item())
