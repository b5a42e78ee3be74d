"""Distillation on two processes (make faults): launched with `accelerate launch` (gloo, CPU) under DDP and ZeRO-2
(the teacher replicated, not wrapped in DDP) and ZeRO-3 (the teacher partitioned too, by deepspeed.initialize
without an optimizer; built whole, and built partitioned with zero3_init_flag true), a run with a teacher trains what one process trains with the same global batch, logs both
loss parts, and under ZeRO-3 resumes bitwise on the same two processes. The one-process cases (the loss, refusals,
exact resume) are in tests/test_distill.py; FSDP2 needs CUDA in accelerate and is not run here (docs/distillation.md).
"""

from __future__ import annotations

import re

import pytest

from fault_utils import record, same_weights
from pretrain_utils import (RESUME_RUN, cut_at, launch_pretrain, logged, make_teacher, metrics, run_inprocess,
                            write_config, zero3_init_config)

pytestmark = [pytest.mark.slow, pytest.mark.faults_full]
FINAL = "export/final/model.safetensors"
DISTILL = "distill_alpha: 0.5\ndistill_temperature: 2.0\ndistill_top_k: 16\n"
ENGINES = {"ddp": "cpu.yaml", "zero2": "cpu-deepspeed-zero2.yaml", "zero3": "cpu-deepspeed-zero3.yaml",
           "zero3-init": None}  # zero3-init: zero3_init_flag true, both models built partitioned (zero.Init)


@pytest.fixture(scope="module")
def distill_setup(tmp_path_factory, demo_paths):
    """The teacher, the run config (pretrain_utils.RESUME_RUN with the teacher) and that run in one process."""
    tmp = tmp_path_factory.mktemp("distill-faults")
    teacher = make_teacher(tmp / "teacher")
    cfg = write_config(tmp, RESUME_RUN + f"teacher: {teacher}\n" + DISTILL)
    run_inprocess(cfg, "--output_dir", str(tmp / "one"))
    return cfg, tmp / "one"


def parts(run) -> dict:
    return {r["step"]: (r["loss"], r["loss_ce"], r["loss_kl"]) for r in metrics(run) if "loss" in r}


@pytest.mark.parametrize("engine", list(ENGINES))
def test_two_processes_with_a_teacher_train_as_one(engine, distill_setup, tmp_path):
    cfg, one = distill_setup
    full = tmp_path / "full"
    accelerate_config = ENGINES[engine] or zero3_init_config(tmp_path)
    log = launch_pretrain(accelerate_config, cfg, full).stderr
    assert "2 processes" in log
    if engine.startswith("zero3"):  # each rank holds its partition of the teacher, not the whole
        held = re.search(r"teacher partitioned by DeepSpeed ZeRO-3 over 2 processes: this rank holds (\d+) of its "
                         r"(\d+) parameters", log)
        assert held and 0 < int(held[1]) < int(held[2]), log[-3000:]
    else:
        assert "teacher replicated on each of the 2 processes" in log and "not wrapped in DDP" in log
    got, ref = parts(full), parts(one)
    assert sorted(got) == [3, 4] and all(got[s][2] > 0.05 for s in got)  # the total, CE and KL of every log line
    for s in got:  # the loss curve, both parts, of one process with the same global batch
        assert got[s] == pytest.approx(ref[s], abs=1e-4)
    record("distill", engine=engine, processes=2, trains_as_one=True)
    if engine == "zero3":  # interrupted after step 2, resumed on the same two processes: bitwise
        resumed = cut_at(full, 2, tmp_path / "resumed")
        launch_pretrain(accelerate_config, cfg, resumed, "--resume", "auto")
        assert same_weights(full / FINAL, resumed / FINAL)
        assert logged(resumed) == logged(full)
        record("distill", engine=engine, change="2->2", bitwise=True)
