"""Resume on another number of processes, the long cases (make faults): every engine that runs on CPU, 1 -> 2 and
2 -> 1, ZeRO-3 built whole (the shipped zero3_init_flag false) and built partitioned (init_from into it), FSDP2's
sharded checkpoint 1 -> 2 and 2 -> 2, and a checkpoint of another engine refused. The case of each engine that
make test keeps is in tests/test_pretrain_distributed.py; docs/reliability.md has the table."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from fault_utils import REPO, record, same_weights, tree_hashes
from pretrain_utils import (RESUME_RUN, cut_at, fsdp2_worker, launch_pretrain, logged, losses, write_config,
                            zero3_init_config)

pytestmark = [pytest.mark.slow, pytest.mark.faults_full]
FINAL = "export/final/model.safetensors"
INITIAL = "export/initial/model.safetensors"


@pytest.fixture
def one_process(resume_one_process):
    return resume_one_process


@pytest.mark.parametrize("engine", ["ddp", "zero2", "zero3-init"])
def test_two_processes_train_as_one_and_resume_bitwise(engine, tmp_path, one_process, resume_two_processes):
    """Two processes train as one and resume on two bitwise (make test keeps one case per engine:
    tests/test_pretrain_distributed.py)."""
    from test_pretrain_distributed import trains_as_one_and_resumes_bitwise

    trains_as_one_and_resumes_bitwise(engine, tmp_path, one_process, resume_two_processes)
    record("world_size", engine=engine, change="2->2", bitwise=True)


def convert_to_universal(checkpoint) -> None:
    """The command the refusal names (tinyllama.checkpoints.universal_command), run as a user would."""
    from tinyllama.checkpoints import universal_command

    args = universal_command(checkpoint).split()[1:]
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_zero2_on_another_number_of_processes_is_refused_then_resumed_through_the_universal_checkpoint(
        tmp_path, resume_one_process, resume_two_processes):
    """ZeRO-2 (the README's 8-GPU default) trains as one process; written by 2 processes, resumed by 1: one message
    naming DeepSpeed's converter, before any work; after that command, the run resumes to the uninterrupted run's
    weights, bitwise."""
    from test_pretrain_distributed import trains_as_one

    _, cfg, full, log = resume_two_processes("zero2")
    trains_as_one(full, log, resume_one_process)
    resumed = cut_at(full, 2, tmp_path / "resumed")
    before = tree_hashes(resumed)
    proc = launch_pretrain("cpu-deepspeed-zero2.yaml", cfg, resumed, "--resume", "auto", processes=1, check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "written by 2 processes under DeepSpeed ZeRO-1/2 and this launch has 1" in errors[0]
    assert "M parameters" not in proc.stderr  # stopped before the model was built (its log line)
    assert tree_hashes(resumed) == before  # nothing written
    command = proc.stderr.split(errors[0], 1)[1].splitlines()[1].strip()
    assert command.startswith("python -m deepspeed.checkpoint.ds_to_universal ")
    conversion = subprocess.run([sys.executable, *command.split()[1:]], cwd=REPO, capture_output=True, text=True)
    assert conversion.returncode == 0, conversion.stdout[-2000:] + conversion.stderr[-2000:]

    proc = launch_pretrain("cpu-deepspeed-zero2.yaml", cfg, resumed, "--resume", "auto", processes=1)
    assert "(its DeepSpeed universal checkpoint)" in proc.stderr
    assert same_weights(full / FINAL, resumed / FINAL)
    assert logged(resumed) == logged(full)


def test_ddp_one_process_checkpoint_resumes_on_two(tmp_path, one_process):
    cfg = write_config(tmp_path, RESUME_RUN)
    run = cut_at(one_process, 2, tmp_path / "run")
    launch_pretrain("cpu.yaml", cfg, run, "--resume", "auto")
    assert same_weights(run / FINAL, one_process / FINAL)
    assert logged(run) == logged(one_process)
    record("world_size", engine="ddp", change="1->2", bitwise=True)


@pytest.mark.parametrize("engine, change", [("zero2", "1->2"), ("zero3-init", "2->1"), ("zero3-init", "1->2")])
def test_deepspeed_resumes_on_another_number_of_processes_through_the_universal_checkpoint(tmp_path, engine,
                                                                                            change):
    accelerate_config = "cpu-deepspeed-zero2.yaml" if engine == "zero2" else zero3_init_config(tmp_path)
    before, after = (int(n) for n in change.split("->"))
    cfg = write_config(tmp_path, RESUME_RUN)
    full = tmp_path / "full"
    launch_pretrain(accelerate_config, cfg, full, processes=before)
    run = cut_at(full, 2, tmp_path / "run")
    proc = launch_pretrain(accelerate_config, cfg, run, "--resume", "auto", processes=after, check=False)
    assert proc.returncode != 0 and "ds_to_universal" in proc.stderr
    convert_to_universal(run / "checkpoints" / "step-000002")
    proc = launch_pretrain(accelerate_config, cfg, run, "--resume", "auto", processes=after)
    assert "(its DeepSpeed universal checkpoint)" in proc.stderr
    assert same_weights(full / FINAL, run / FINAL)
    assert logged(run) == logged(full)
    record("world_size", engine=engine, change=change, bitwise=True)


def test_zero3_built_whole_starts_from_one_process_weights_and_resumes_bitwise(tmp_path, one_process):
    """The shipped ZeRO-3 config (zero3_init_flag false): the model is built whole on each rank (accelerate's own
    registration with transformers would otherwise build it partitioned), so the initial weights, the parameter
    count and the losses are one process's."""
    cfg = write_config(tmp_path, RESUME_RUN)
    full = tmp_path / "full"
    proc = launch_pretrain("cpu-deepspeed-zero3.yaml", cfg, full)
    assert "model 0.62M parameters" in proc.stderr
    assert same_weights(full / INITIAL, one_process / INITIAL)
    assert losses(full) == pytest.approx(losses(one_process), abs=1e-4)
    run = cut_at(full, 2, tmp_path / "run")
    launch_pretrain("cpu-deepspeed-zero3.yaml", cfg, run, "--resume", "auto")
    assert same_weights(full / FINAL, run / FINAL)
    assert logged(run) == logged(full)


@pytest.mark.parametrize("source", ["checkpoints/step-000004", "export/final"])
def test_zero3_built_partitioned_starts_from_init_from(tmp_path, one_process, source):
    """init_from a checkpoint folder (loaded module by module into the partitioned weights) or an export
    (transformers' own ZeRO-3 loading): the weights before the first update are the source's."""
    cfg = write_config(tmp_path, RESUME_RUN)
    run = tmp_path / "run"
    launch_pretrain(zero3_init_config(tmp_path), cfg, run, "--init_from", one_process / source, "--max_steps", "2")
    assert same_weights(run / INITIAL, one_process / FINAL)
    assert not same_weights(run / FINAL, one_process / FINAL)  # (and it trained from there)


def test_a_checkpoint_of_another_engine_is_refused_before_any_work(tmp_path, one_process):
    cfg = write_config(tmp_path, RESUME_RUN)
    run = cut_at(one_process, 2, tmp_path / "run")
    before = tree_hashes(run)
    proc = launch_pretrain("cpu-deepspeed-zero2.yaml", cfg, run, "--resume", "auto", check=False)
    assert proc.returncode != 0
    errors = {line for line in proc.stderr.splitlines() if line.startswith("error: ")}
    assert len(errors) == 1, proc.stderr[-3000:]  # (the same line from each rank)
    assert "was written under one process or DDP and this launch runs DeepSpeed ZeRO-1/2" in errors.pop()
    assert tree_hashes(run) == before


@pytest.mark.parametrize("before, after", [(1, 2), (2, 2)])
def test_fsdp2_sharded_checkpoint_resumes_bitwise(tmp_path, before, after):
    full = fsdp2_worker(before, tmp_path / "full", "--save_at", "2")
    resumed = fsdp2_worker(after, tmp_path / "resumed", "--resume_from", str(tmp_path / "full" / "checkpoint"))
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
    record("world_size", engine="fsdp2", change=f"{before}->{after}", bitwise=True)
