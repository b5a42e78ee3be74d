"""Several processes on CPU (gloo), launched with `accelerate launch` as a user would, under DDP, DeepSpeed ZeRO-2 and
ZeRO-3 (built partitioned: zero3_init_flag true): they start from the weights one process starts from, train what
one process trains with the same global batch, resume bitwise, on the same or another number of processes, and
export a folder transformers loads. docs/reliability.md ("Resume on another number of processes") lists every case;
the longer ones are in tests/faults/test_faults_world_size.py (make faults)."""

import re

import pytest
import torch

from fault_utils import same_weights
from pretrain_utils import (REPO, RESUME_RUN, accelerate_launch, cut_at, fsdp2_worker, launch_pretrain, logged,
                            losses, write_config)

pytestmark = pytest.mark.slow

CONFIG = RESUME_RUN
FINAL = "export/final/model.safetensors"


def trains_as_one(full, log, one_process) -> None:
    """A 2-process run (``full``, its log) against the same run in one process (``one_process``)."""
    assert "2 processes" in log
    # the parameter count is the model's (not the 0 of weights partitioned while built), and so is the card's
    assert re.search(r"model 0\.62M parameters", log), log[-2000:]
    assert "(0.6M parameters" in (full / "export" / "final" / "README.md").read_text()
    # TinyLlama's init is a function of the seed alone: one process, DDP, ZeRO-2 and ZeRO-3 built partitioned
    assert same_weights(full / "export/initial/model.safetensors", one_process / "export/initial/model.safetensors")
    # gradients averaged over both ranks: the loss curve of one process with the same global batch (a rank training
    # on its own, or a loss logged from one rank only, differs in the second decimal)
    assert sorted(losses(full)) == [3, 4]
    assert losses(full) == pytest.approx(losses(one_process), abs=1e-4)


def trains_as_one_and_resumes_bitwise(engine, tmp_path, one_process, two_processes) -> None:
    accelerate_config, cfg, full, log = two_processes(engine)
    trains_as_one(full, log, one_process)
    # interrupted after step 2, resumed on the same two processes: bitwise the same weights, the same log lines
    resumed = cut_at(full, 2, tmp_path / "resumed")
    launch_pretrain(accelerate_config, cfg, resumed, "--resume", "auto")
    assert same_weights(full / FINAL, resumed / FINAL)
    assert logged(resumed) == logged(full)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(full / "export" / "final")
    assert model.config.num_hidden_layers == 2 and torch.isfinite(model.lm_head.weight).all()


def test_zero3_built_partitioned_trains_as_one_process(resume_one_process, resume_two_processes):
    """ZeRO-3 with zero3_init_flag true: the weights of one process before any update, the parameter count, the
    losses. Its bitwise resume on 2, 1 and 2 -> 1 -> 2 processes, and DDP's and ZeRO-2's 2 -> 2, are in make faults
    (tests/faults/test_faults_world_size.py: trains_as_one_and_resumes_bitwise)."""
    _, _, full, log = resume_two_processes("zero3-init")
    trains_as_one(full, log, resume_one_process)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(full / "export" / "final")  # the export gathered the shards
    assert model.config.num_hidden_layers == 2 and torch.isfinite(model.lm_head.weight).all()


def test_ddp_preempted_on_two_processes_resumes_on_one_with_every_sample_once(tmp_path, resume_one_process):
    """A preemption (SIGTERM during step 2) of a 2-process DDP run, resumed on 1 process: the samples read are
    exactly 0..N-1, each once, and the run ends bitwise where one uninterrupted process ends, logging the same."""
    cfg = write_config(tmp_path, CONFIG)
    run, record = tmp_path / "run", tmp_path / "samples"
    record.mkdir()
    env = {"TINYLLAMA_TEST_RECORD_SAMPLES": str(record)}
    proc = launch_pretrain("cpu.yaml", cfg, run, env={**env, "TINYLLAMA_TEST_FAULT": "sigterm@step:2"})
    assert "stop requested (SIGTERM)" in proc.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002"]
    launch_pretrain("cpu.yaml", cfg, run, "--resume", "auto", processes=1, env=env)
    read = sorted(int(line) for f in record.glob("samples-*.txt") for line in f.read_text().split())
    assert read == list(range(4 * 8))
    assert same_weights(run / FINAL, resume_one_process / FINAL)
    assert logged(run) == logged(resume_one_process)


def test_zero2_trains_as_one_process(resume_one_process, resume_two_processes):
    """ZeRO-2 (the README's 8-GPU default) on two processes: the weights of one process before any update, the
    parameter count, the losses. Its refused-then-converted resume on one process, and its bitwise resume on two,
    are in make faults (tests/faults/test_faults_world_size.py)."""
    _, _, full, log = resume_two_processes("zero2")
    trains_as_one(full, log, resume_one_process)


def test_fsdp2_sharded_checkpoint_resumes_on_another_number_of_processes(tmp_path):
    """FSDP2: accelerate's sharded checkpoint (torch.distributed.checkpoint) written by 2 processes and read by 1
    (tests/fsdp2_worker.py: fully_shard on CPU with gloo; accelerate's own FSDP needs CUDA), bitwise."""
    full = fsdp2_worker(2, tmp_path / "full", "--save_at", "2")
    assert (tmp_path / "full" / "checkpoint" / "pytorch_model_fsdp_0").is_dir()
    resumed = fsdp2_worker(1, tmp_path / "resumed", "--resume_from", str(tmp_path / "full" / "checkpoint"))
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)


def test_chat_recipes_see_a_two_process_cpu_launch_as_distributed(tmp_path):
    """The chat recipes' TrainingArguments, after complete_cpu_launch (their first call): 2 ranks of one DDP run,
    not two single-process runs writing to the same output_dir."""
    probe = tmp_path / "probe.py"
    # one file per rank: two processes printing to one pipe can interleave mid-line (seen in CI)
    probe.write_text(
        "import os, pathlib\n"
        "from tinyllama.utils import complete_cpu_launch\n"
        "complete_cpu_launch()\n"
        "from transformers import TrainingArguments\n"
        f"a = TrainingArguments(output_dir={str(tmp_path / 'out')!r}, report_to=[])\n"
        f"pathlib.Path({str(tmp_path)!r}, 'rank-' + os.environ['RANK']).write_text(\n"
        "    f'RANK {a.process_index} {a.world_size} {a.parallel_mode.value}')\n")
    proc = accelerate_launch(REPO / "configs" / "accelerate" / "cpu.yaml", probe)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [p.read_text() for p in sorted(tmp_path.glob("rank-*"))]
    assert ranks == ["RANK 0 2 distributed", "RANK 1 2 distributed"]


def test_fsdp_asked_for_where_accelerate_cannot_give_it_is_refused_before_any_work(tmp_path):
    """accelerate's FSDP needs CUDA; on CPU it quietly set up plain DDP instead. The recipe says so and stops."""
    config = (REPO / "configs" / "accelerate" / "fsdp2.yaml").read_text()
    config = config.replace("mixed_precision: bf16", 'mixed_precision: "no"\nuse_cpu: true')
    config = config.replace("num_processes: 8", "num_processes: 2")
    (tmp_path / "cpu-fsdp2.yaml").write_text(config)
    out = tmp_path / "run"
    proc = accelerate_launch(tmp_path / "cpu-fsdp2.yaml", "recipes/pretrain.py", "--config",
                             write_config(tmp_path, CONFIG), "--output_dir", out)
    assert proc.returncode != 0
    assert "error: the accelerate config asks for FSDP, but accelerate set up MULTI_CPU" in proc.stderr
    assert not out.exists()
