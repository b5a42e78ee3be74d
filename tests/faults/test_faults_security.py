"""Security defaults: no remote code unless asked, safetensors only for model weights, the Hub token never written."""

from __future__ import annotations

from pathlib import Path

import pytest

from fault_utils import CHAIN_RUN, launch, record
from pretrain_utils import RecordingHub, write_config

PLANTED = "hf_plantedTOKENfaultsuite0123456789"


def test_trust_remote_code_is_off_and_weights_load_as_safetensors_only(monkeypatch, reference):
    import transformers

    from tinyllama.model import build_model
    from tinyllama.training.args import PretrainArgs

    assert PretrainArgs.__dataclass_fields__["trust_remote_code"].default is False
    seen = {}
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    build_model(init_from=str(reference.parent))
    assert seen["trust_remote_code"] is False and seen["use_safetensors"] is True


def test_exports_and_checkpoints_hold_weights_as_safetensors_only(reference):
    run = reference.parents[2]
    for folder in [*run.glob("export/step-*"), *run.glob("checkpoints/step-*")]:
        names = {p.name for p in folder.iterdir()}
        assert "model.safetensors" in names, folder
        assert not names & {"pytorch_model.bin", "model.pt", "pytorch_model.pt"}, (folder, names)


@pytest.mark.slow
def test_hub_token_never_written(tmp_path, demo_paths):
    cfg = write_config(tmp_path, CHAIN_RUN + "max_steps: 2\npush_to_hub: true\nhub_model_id: me/secret\n")
    with RecordingHub() as hub:
        proc = launch("recipes/pretrain.py", ["--config", str(cfg), "--output_dir", str(tmp_path / "run")],
                      env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url, "HF_TOKEN": PLANTED,
                           "TINYLLAMA_DEBUG": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert hub.commits, "nothing was uploaded"
    leaks = [str(p) for p in Path(tmp_path).rglob("*") if p.is_file() and PLANTED.encode() in p.read_bytes()]
    leaks += [name for name, data in hub.files.items() if PLANTED.encode() in data]
    assert PLANTED not in proc.stdout
    assert not leaks, leaks
    record("token_grep", files=sum(1 for p in Path(tmp_path).rglob("*") if p.is_file()) + len(hub.files), leaks=0)
