"""Full chat fine-tunes keep fp32 master weights: at the recipe's real learning rates (SFT 2e-5, DPO 5e-7) bf16
weights updated directly by AdamW barely move, so the recipes load float32 weights (bf16 autocast does the compute)
or refuse bf16 weights with a message, before anything is loaded."""

import re
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file

from pretrain_utils import REPO, load_script
from tinyllama import chat
from tinyllama.chat.demo_data import build_base_model, ultrachat_rows, ultrafeedback_rows, write_hub_layout


def common(base, data, out, lr, dtype):
    """A 4-step run at a real learning rate on the demo-size model (weights N(0, 0.02) like a real model's)."""
    return ["--model_name_or_path", str(base), "--dataset_name", str(data), "--output_dir", str(out),
            "--dtype", dtype, "--bf16", "true", "--learning_rate", str(lr), "--lr_scheduler_type", "constant",
            "--warmup_steps", "0", "--max_steps", "4", "--per_device_train_batch_size", "4", "--max_length", "96",
            "--activation_checkpointing", "false", "--report_to", "none", "--save_strategy", "'no'",
            "--eval_strategy", "'no'", "--logging_steps", "4", "--disable_tqdm", "true",
            "--dataloader_pin_memory", "false", "--seed", "0", "--use_cpu", "true"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory, demo_paths):
    tmp = tmp_path_factory.mktemp("precision")
    base = build_base_model(tmp / "base", model_config="demo")
    chat.setup_tokenizer(str(base)).save_pretrained(base)  # DPO starts from an SFT output: template included
    sft_data = write_hub_layout(tmp / "ultrachat", {"train_sft": ultrachat_rows(32), "test_sft": ultrachat_rows(4)})
    dpo_data = write_hub_layout(tmp / "ultrafeedback", {"train_prefs": ultrafeedback_rows(32),
                                                        "test_prefs": ultrafeedback_rows(4)})
    return SimpleNamespace(tmp=tmp, base=base, sft=sft_data, dpo=dpo_data)


def changed_fraction(base, out) -> float:
    """Share of all weight elements that differ from the start, compared in the saved model's dtype."""
    start, end = load_file(str(base / "model.safetensors")), load_file(str(out / "model.safetensors"))
    changed = total = 0
    for name, w in end.items():
        changed += (w != start[name].to(w.dtype)).sum().item()
        total += w.numel()
    return changed / total


@pytest.mark.parametrize("recipe,lr", [("sft", 2e-5), ("dpo", 5e-7)])
def test_full_fine_tune_at_the_real_learning_rate_moves_most_weights(assets, recipe, lr, monkeypatch):
    script = load_script(f"recipes/{recipe}.py")
    data = assets.sft if recipe == "sft" else assets.dpo
    extra = ["--max_prompt_length", "48"] if recipe == "dpo" else []
    out = assets.tmp / f"{recipe}-fp32"
    script.main(common(assets.base, data, out, lr, "float32") + extra)
    moved = changed_fraction(assets.base, out)
    assert moved > 0.5, f"{recipe} at lr {lr}: only {moved:.2%} of the weights changed with fp32 master weights"

    # what the refusal prevents: the same run with bf16 weights updated directly (the check bypassed)
    monkeypatch.setattr("tinyllama.chat.recipe.check_precision", lambda *a: None)  # where the recipe flow calls it
    out = assets.tmp / f"{recipe}-bf16"
    script.main(common(assets.base, data, out, lr, "bfloat16") + extra)
    lost = changed_fraction(assets.base, out)
    print(f"{recipe} lr {lr}: {moved:.2%} of the weights changed with fp32 masters, {lost:.2%} with bf16 weights")
    assert lost < moved / 2


@pytest.mark.parametrize("recipe", ["sft", "dpo"])
def test_bf16_weights_for_a_full_fine_tune_are_refused_before_loading(assets, recipe, monkeypatch, capsys):
    script = load_script(f"recipes/{recipe}.py")
    data = assets.sft if recipe == "sft" else assets.dpo
    args = common(assets.base, data, assets.tmp / "refused", 2e-5, "bfloat16")
    loaded = []
    monkeypatch.setattr("tinyllama.chat.recipe.check_model_source", lambda *a, **k: loaded.append(a))
    with pytest.raises(SystemExit) as stop:
        script.main(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert re.search("error: dtype: bfloat16 for a full fine-tune.*--dtype float32.*DeepSpeed.*LoRA", err), err
    assert not loaded and not (assets.tmp / "refused").exists()
    # LoRA keeps its bf16 base; DeepSpeed keeps fp32 masters of bf16 weights
    chat.check_precision(SimpleNamespace(use_peft=True, dtype="bfloat16"), SimpleNamespace(deepspeed=None))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    chat.check_precision(SimpleNamespace(use_peft=False, dtype="bfloat16"), SimpleNamespace(deepspeed=None))


def test_unset_dtype_becomes_float32_for_a_full_fine_tune():
    model_args = SimpleNamespace(use_peft=False, dtype=None)
    chat.check_precision(model_args, SimpleNamespace(deepspeed=None, learning_rate=2e-5))
    assert model_args.dtype == "float32"
    lora = SimpleNamespace(use_peft=True, dtype=None)
    chat.check_precision(lora, SimpleNamespace(deepspeed=None, learning_rate=2e-4))
    assert lora.dtype is None


def test_chat_v1_configs_train_fp32_master_weights_and_lora_keeps_a_bf16_base():
    from tinyllama.chat.args import parse_chat_config

    for name in ("sft-ultrachat", "dpo-ultrafeedback"):
        _, training_args, model_args = parse_chat_config(REPO / "configs" / "chat" / f"{name}.yaml", ["--use_cpu", "true"])
        assert model_args.dtype == "float32" and training_args.bf16 and not model_args.use_peft, name
    for name in ("sft-lora", "dpo-lora"):
        _, _, model_args = parse_chat_config(REPO / "configs" / "chat" / f"{name}.yaml", ["--use_cpu", "true"])
        assert model_args.dtype == "bfloat16" and model_args.use_peft, name


@pytest.mark.parametrize("quantized", [False, True])
def test_lora_adapters_train_in_fp32_and_qlora_adapters_in_bf16(quantized, demo_tokenizer, tmp_path):
    """What docs/chat.md and configs/chat/sft-qlora.yaml state: on a bf16 base, PEFT makes LoRA adapters fp32; on a
    4-bit base, TRL's SFTTrainer casts them to bf16 (the QLoRA paper's setting). bitsandbytes quantizes on CUDA
    only, so the 4-bit base is simulated by the flag TRL reads (``is_loaded_in_4bit``)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from tinyllama.model import build_model

    model = build_model("tiny", attn_implementation="sdpa", seed=0, dtype=torch.bfloat16)
    model.is_loaded_in_4bit = quantized
    trainer = SFTTrainer(
        model=model, processing_class=demo_tokenizer, train_dataset=Dataset.from_list([{"text": "a b c d"}] * 2),
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
        args=SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_length=16))
    adapters = {p.dtype for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert adapters == {torch.bfloat16 if quantized else torch.float32}
