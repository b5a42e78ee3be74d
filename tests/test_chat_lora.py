"""LoRA SFT: train, save, resume from a checkpoint, merge with scripts/merge_lora.py.

Resume is proven by equivalence: 6 steps straight, and 3 steps + resume to 6 from the checkpoint, give the same
adapter (weights, optimizer, schedule and data order all restored). The merged model is proven by its logits,
equal to the base + adapter's.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pretrain_utils import load_script
from chat_helpers import tiny_lora_sft_run

REPO = Path(__file__).resolve().parent.parent
LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def adapter_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory, demo_paths):
    tmp = tmp_path_factory.mktemp("lora")
    base, data, cli = tiny_lora_sft_run(tmp, save_steps=3)
    sft = load_script("recipes/sft.py")

    straight = tmp / "straight"
    straight_metrics = sft.main(cli(straight))  # the recipe's entry point, in process
    resumed = tmp / "resumed"
    resumed_metrics = sft.main(cli(resumed, "--resume_from_checkpoint", str(straight / "checkpoint-3")))
    return dict(tmp=tmp, base=base, data=data, cli=cli, straight=straight, resumed=resumed,
                straight_metrics=straight_metrics, resumed_metrics=resumed_metrics)


def test_lora_saves_an_adapter_with_tokenizer_and_card(lora_runs):
    out = lora_runs["straight"]
    config = json.loads((out / "adapter_config.json").read_text())
    targets = {name.rsplit(".", 1)[-1] for name in config["target_modules"]}
    assert targets == LINEAR  # all linear layers of every block, not lm_head
    assert sum(1 for name in config["target_modules"] if name.startswith("model.layers.")) == 2 * len(LINEAR)
    assert config["r"] == 8 and Path(config["base_model_name_or_path"]) == lora_runs["base"]
    assert not (out / "model.safetensors").exists()  # an adapter, not a copy of the model
    for name in ("adapter_model.safetensors", "chat_template.jinja", "tokenizer.json", "tokenizer.model", "README.md",
                 "config.yaml"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert "LoRA adapter" in card and "lora_r | 8" in card and "library_name: peft" in card
    assert (out / "checkpoint-3" / "adapter_model.safetensors").is_file()


def test_lora_resume_from_checkpoint_continues_the_same_run(lora_runs):
    straight = json.loads((lora_runs["straight"] / "checkpoint-6" / "trainer_state.json").read_text())
    losses = {h["step"]: h["loss"] for h in straight["log_history"] if "loss" in h}
    resumed = json.loads((lora_runs["resumed"] / "checkpoint-6" / "trainer_state.json").read_text())
    assert resumed["global_step"] == 6
    # the resumed process trained steps 4-6 only (its train_loss averages those), with the same losses as the
    # straight run's steps 4-6: weights, optimizer, schedule and data order were all restored
    assert lora_runs["resumed_metrics"]["train_loss"] == pytest.approx((losses[4] + losses[5] + losses[6]) / 3,
                                                                       rel=1e-4)
    assert lora_runs["straight_metrics"]["train_loss"] == pytest.approx(sum(losses.values()) / 6, rel=1e-4)
    a, b = adapter_weights(lora_runs["straight"]), adapter_weights(lora_runs["resumed"])
    first = adapter_weights(lora_runs["straight"] / "checkpoint-3")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5)
    assert any(not torch.equal(a[k], first[k]) for k in a)  # steps 4-6 changed the adapter


@pytest.mark.slow
def test_merged_model_logits_equal_the_adapter_models(lora_runs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = lora_runs["tmp"] / "merged"
    env = {**os.environ, "TINYLLAMA_DEBUG": ""}
    result = subprocess.run([sys.executable, "scripts/merge_lora.py", str(lora_runs["straight"]), "--output_dir",
                             str(merged)], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert not (merged / "adapter_config.json").exists() and (merged / "model.safetensors").is_file()
    assert (merged / "tokenizer.model").read_bytes() == (lora_runs["base"] / "tokenizer.model").read_bytes()
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is your name?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(str(lora_runs["base"]), dtype=torch.float32).eval()
        base_logits = base(ids).logits
        adapted = PeftModel.from_pretrained(base, str(lora_runs["straight"])).eval()
        adapter_logits = adapted(ids).logits
        merged_logits = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()(ids).logits
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-5, rtol=1e-5)
    assert (merged_logits - base_logits).abs().max() > 1e-2  # the adapter did something
    card = (merged / "README.md").read_text()
    assert "## Merged" in card and "library_name: transformers" in card
    assert tokenizer.chat_template and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_merge_refuses_a_full_model(lora_runs, tmp_path):
    merge = load_script("scripts/merge_lora.py")
    with pytest.raises(ValueError, match="not a LoRA adapter"):
        merge.merge(str(lora_runs["base"]), str(tmp_path / "x"))


class FakeHub:
    """Stands in for huggingface_hub.HfApi in transformers.trainer: records what would be uploaded."""

    def __init__(self):
        self.uploads = []

    def create_repo(self, repo_id, **kwargs):
        from types import SimpleNamespace

        return SimpleNamespace(repo_id=f"someone/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=(), run_as_future=False, **kwargs):
        import fnmatch
        from concurrent.futures import Future

        root = Path(folder_path)
        files = {}
        for path in root.rglob("*"):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and not any(fnmatch.fnmatch(rel.split("/")[0], p) for p in ignore_patterns):
                files[rel] = path.read_bytes()
        self.uploads.append((repo_id, files))
        if run_as_future:
            future = Future()
            future.set_result(None)
            return future
        return None


@pytest.mark.slow
def test_push_to_hub_uploads_adapter_tokenizer_card_and_config_without_the_token(lora_runs, monkeypatch):
    import transformers.trainer

    hub = FakeHub()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    secret = "hf_notARealTokenButNeverWriteIt"
    monkeypatch.setenv("HF_TOKEN", secret)
    sft = load_script("recipes/sft.py")
    out = lora_runs["tmp"] / "pushed"
    sft.main(lora_runs["cli"](out, "--max_steps", "2", "--save_strategy", "'no'", "--push_to_hub", "true",
                              "--hub_model_id", "tinyllama-chat-lora-test"))
    repo, files = hub.uploads[-1]
    assert repo == "someone/tinyllama-chat-lora-test"
    for name in ("adapter_model.safetensors", "adapter_config.json", "chat_template.jinja", "tokenizer.json",
                 "README.md", "config.yaml"):
        assert name in files, name
    card = files["README.md"].decode()
    assert "LoRA adapter" in card and "## Hyperparameters" in card and str(lora_runs["base"]) in card
    assert not any(name.startswith("checkpoint-") for name in files)
    assert all(secret.encode() not in content for content in files.values())
