"""FSDP2 (configs/accelerate/fsdp2.yaml) on the GPU path: ``accelerate launch`` with one process per visible GPU (at
least one) runs the pretraining recipe, sharded, to the same losses as the unsharded run in this process (fp32:
the sharded run reduces the same numbers in another order, rel 1e-4), and writes its final export.

accelerate's FSDP needs CUDA: on CPU the recipe refuses it with a message (tests/test_pretrain_distributed.py covers that),
so this check has no CPU form.
"""

from __future__ import annotations

import sys

import pytest
import torch

from pretrain_utils import REPO, losses, run_cli, run_inprocess, write_config

RUN = "max_steps: 4\nsave_every: 2\neval_every: 0\n"


@pytest.mark.gpu
def test_fsdp2_trains_to_the_unsharded_losses_and_exports(demo_paths, tmp_path, tier, record):
    if not tier.cuda:
        pytest.skip("accelerate's FSDP needs CUDA GPUs (the tier runs on CPU)")
    gpus = torch.cuda.device_count()
    cfg = write_config(tmp_path, RUN)  # tiny model, fp32 ("no" mixed precision), sdpa, global batch 8
    micro = 8 // gpus if 8 % gpus == 0 else 1
    run_inprocess(cfg, "--output_dir", str(tmp_path / "plain"), "--micro_batch_size", str(micro))
    proc = run_cli([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                    str(REPO / "configs/accelerate/fsdp2.yaml"), "--num_processes", str(gpus), "recipes/pretrain.py",
                    "--config", str(cfg), "--output_dir", str(tmp_path / "fsdp2"), "--micro_batch_size", str(micro)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    plain, sharded = losses(tmp_path / "plain"), losses(tmp_path / "fsdp2")
    record("losses", f"unsharded {plain}, FSDP2 on {gpus} GPU(s) {sharded}")
    assert sharded.keys() == plain.keys() == {1, 2, 3, 4}
    for step in plain:
        assert sharded[step] == pytest.approx(plain[step], rel=1e-4), step
    assert (tmp_path / "fsdp2/export/final/model.safetensors").is_file()
    assert (tmp_path / "fsdp2/checkpoints").is_dir()
