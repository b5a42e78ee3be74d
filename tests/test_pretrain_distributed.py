"""Two processes on CPU (gloo) under DeepSpeed ZeRO-2 and ZeRO-3: they train, save, resume exactly and export a
folder that transformers loads. Launched with `accelerate launch`, as a user would.

Plain DDP on CPU (configs/accelerate/cpu.yaml) is left out: about one run in five, the main process passes the
barrier after ``save_state`` before the other rank has written its RNG state file (the checkpoint's completeness
check then stops the run with "rank files missing"); the cause is not found yet (see the issue note)."""

import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file

from pretrain_utils import REPO, losses, run_cli, write_config

pytestmark = pytest.mark.slow


def launch(accelerate_config: str, cfg, out, *extra) -> None:
    proc = run_cli([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                    str(REPO / "configs" / "accelerate" / accelerate_config), "recipes/pretrain.py",
                    "--config", str(cfg), "--output_dir", str(out), *extra])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2 processes" in proc.stderr


@pytest.mark.parametrize("accelerate_config", ["cpu-deepspeed-zero2.yaml", "cpu-deepspeed-zero3.yaml"])
def test_two_processes_train_save_and_resume_exactly(accelerate_config, tmp_path, demo_paths):
    cfg = write_config(tmp_path, "max_steps: 4\nsave_every: 2\neval_every: 2\n")
    full = tmp_path / "full"
    launch(accelerate_config, cfg, full)
    ref = losses(full)
    assert sorted(ref) == [1, 2, 3, 4] and ref[4] < ref[1]

    # the same run, interrupted after step 2: keep only its step-2 checkpoint, then --resume auto
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-000004")
    shutil.rmtree(resumed / "export")
    (resumed / "logs" / "metrics.jsonl").unlink()
    launch(accelerate_config, cfg, resumed, "--resume", "auto")
    got = losses(resumed)
    assert sorted(got) == [3, 4]
    assert got[3] == pytest.approx(ref[3], abs=1e-6) and got[4] == pytest.approx(ref[4], abs=1e-6)

    from transformers import AutoModelForCausalLM

    a = load_file(str(full / "export" / "final" / "model.safetensors"))
    b = load_file(str(resumed / "export" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    model = AutoModelForCausalLM.from_pretrained(full / "export" / "final")
    assert model.config.num_hidden_layers == 2 and torch.isfinite(model.lm_head.weight).all()
