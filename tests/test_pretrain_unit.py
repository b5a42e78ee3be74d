"""Pieces of the pretraining recipe that need no data: schedules, batch accounting, config validation."""


import pytest

from tinyllama.config import ConfigError, parse_config
from tinyllama.training.args import PretrainArgs
from tinyllama.training.schedule import BatchSchedule, LRSchedule


def test_cosine_schedule_is_tinyllamas():
    lr = LRSchedule(peak=4e-4, min_lr=4e-5, warmup_steps=2000, total_steps=1_430_512)
    assert lr(0) == 0 and lr(1000) == pytest.approx(2e-4) and lr(2000) == pytest.approx(4e-4)
    mid = 2000 + (1_430_512 - 2000) // 2
    assert lr(mid) == pytest.approx((4e-4 + 4e-5) / 2, rel=1e-4)
    assert lr(1_430_512) == pytest.approx(4e-5) and lr(2_000_000) == 4e-5
    assert all(lr(s) >= lr(s + 1000) for s in range(2000, 1_430_000, 1000))


def test_continued_cosine_picks_up_where_the_previous_stage_left_off():
    full = LRSchedule(peak=4e-4, min_lr=4e-5, warmup_steps=100, total_steps=1000)
    second = LRSchedule(peak=4e-4, min_lr=4e-5, warmup_steps=100, total_steps=1000, offset=600)
    assert [second(s) for s in range(400)] == [full(600 + s) for s in range(400)]


@pytest.mark.parametrize("shape", ["linear", "1-sqrt", "cosine"])
def test_wsd_is_flat_then_decays_to_the_floor(shape):
    lr = LRSchedule(peak=1e-3, min_lr=1e-5, warmup_steps=10, total_steps=1000, kind="wsd", decay_fraction=0.2,
                    decay_shape=shape)
    assert lr(5) == pytest.approx(5e-4)
    assert all(lr(s) == 1e-3 for s in range(10, 800))
    decay = [lr(s) for s in range(800, 1000)]
    assert all(a >= b for a, b in zip(decay, decay[1:])) and decay[0] < 1e-3
    assert lr(999) == pytest.approx(1e-5)
    if shape == "1-sqrt":  # faster initial drop than linear
        assert lr(850) < 1e-5 + (1e-3 - 1e-5) * (1 - 51 / 200)


def test_batch_schedule_keeps_the_sample_count_exact():
    b = BatchSchedule(initial=4, changes=((10, 16), (20, 8)))
    assert [b.batch_at(s) for s in (0, 9, 10, 19, 20, 100)] == [4, 4, 16, 16, 8, 8]
    running = 0
    for step in range(40):
        assert b.samples_before(step) == running
        running += b.batch_at(step)


def test_shipped_pretrain_config_reproduces_tinyllama_v1():
    from tinyllama.utils import repo_root

    (a,) = parse_config(PretrainArgs, ["--config", str(repo_root() / "configs/pretrain/tinyllama-1.1b.yaml")])
    assert (a.learning_rate, a.min_lr, a.warmup_steps, a.max_steps) == (4e-4, 4e-5, 2000, 1_430_512)
    assert (a.adam_beta1, a.adam_beta2, a.weight_decay, a.max_grad_norm) == (0.9, 0.95, 0.1, 1.0)
    assert (a.global_batch_size, a.seq_len, a.seed) == (1024, 2048, 3407)
    assert a.mixture == {"slimpajama": 0.693584, "starcoderdata": 0.306416}
    assert a.no_decay_norm_and_embeddings is False and a.mixed_precision == "bf16"
    assert a.attn_implementation == "flash_attention_2" and a.model_config == "tinyllama-1.1b"
    # 1024 x 2048 = 2,097,152 tokens per step; x 1,430,512 steps = 3.0T tokens
    assert a.global_batch_size * a.seq_len * a.max_steps == pytest.approx(3.0e12, rel=0.001)


def test_bad_pretrain_configs_name_every_problem(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model_config: tiny\nlearning_rate: -1\nglobal_batch_size: 16\nmicro_batch_size: 4\n"
                   "min_lr: 0.1\nbatch_schedule: [{step: 5, global_batch_size: 24}, {step: 0}]\n"
                   "push_to_hub: true\nlr_schedul: wsd\nmixture: {a: -1}\n")
    with pytest.raises(ConfigError) as info:
        parse_config(PretrainArgs, ["--config", str(cfg)])
    msg = str(info.value)
    for fragment in ["'learning_rate' must be positive", "global batch 16 (from step 0) is not divisible by "
                     "micro_batch_size 4 x 3 processes", "batch_schedule[1]", "'push_to_hub' needs 'hub_model_id'",
                     "unknown key 'lr_schedul'", "did you mean 'lr_schedule'", "'mixture'", str(cfg)]:
        assert fragment in msg, fragment
    assert "global batch 24 (from step 5)" not in msg  # 24 = 4 x 3 x 2 is fine


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter "
                                                "failed writing file data/3: file write failed")])
def test_a_full_disk_during_a_checkpoint_is_named_and_keeps_the_previous_one(tmp_path, error):
    """Both ways a full disk surfaces (an OSError from our writes, torch.save's RuntimeError) give one message that
    names the failed and the intact checkpoint, and the partial folder is removed."""
    import json as _json

    from tinyllama.checkpoints import TrainState, save_checkpoint

    class Accel:  # just what save_checkpoint asks of accelerate, with a disk that fills up
        is_main_process = True

        def wait_for_everyone(self):
            pass

        def save_state(self, path, safe_serialization=True):
            (tmp_path / "ckpt" / ".tmp-step-000004" / "model.safetensors").write_bytes(b"partial")
            raise error

    previous = tmp_path / "ckpt" / "step-000002"
    previous.mkdir(parents=True)
    (previous / "train_state.json").write_text(_json.dumps({"step": 2}))
    with pytest.raises(OSError, match="no space left on device while writing checkpoint .*step-000004.*the previous "
                                      "checkpoint .*step-000002 is intact"):
        save_checkpoint(Accel(), tmp_path / "ckpt", TrainState(step=4), None, keep_last=3)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step-000002"]
    with pytest.raises(ValueError):  # anything else is not dressed up as a full disk
        class Other(Accel):
            def save_state(self, path, safe_serialization=True):
                raise ValueError("something else")

        save_checkpoint(Other(), tmp_path / "ckpt", TrainState(step=4), None, keep_last=3)


def test_resume_source_by_engine_and_number_of_processes(tmp_path):
    """What a resume reads (tinyllama.checkpoints.resume_source), from the files accelerate wrote: DDP and
    FSDP checkpoints on any number of processes as they are; DeepSpeed's on another number only through its universal
    conversion, else one message naming the converter; another engine's never."""
    from tinyllama.checkpoints import ResumeSource, resume_source

    def checkpoint(kind: str, ranks: int):
        root = tmp_path / kind / "checkpoints"
        folder = root / "step-000002"
        folder.mkdir(parents=True)
        (folder / "train_state.json").write_text("{}")
        for r in range(ranks):
            (folder / f"random_states_{r}.pkl").write_bytes(b"")
        files = {"plain": ["model.safetensors"], "fsdp": ["pytorch_model_fsdp_0/.metadata"],
                 "zero": ["pytorch_model/zero_pp_rank_0_mp_rank_00_optim_states.pt"],
                 "zero3": ["pytorch_model/zero_pp_rank_0_mp_rank_00_model_states.pt"]}[kind]
        for f in files:
            (folder / f).parent.mkdir(parents=True, exist_ok=True)
            (folder / f).write_bytes(b"")
        return folder

    for kind in ("plain", "fsdp"):
        folder = checkpoint(kind, 2)
        assert resume_source("auto", folder.parent, kind, 1) == ResumeSource(folder, folder)
    for kind in ("zero", "zero3"):
        folder = checkpoint(kind, 2)
        assert resume_source("auto", folder.parent, kind, 2) == ResumeSource(folder, folder)
        with pytest.raises(ValueError, match=r"written by 2 processes .* this launch has 4\..*\n    python -m "
                                             r"deepspeed\.checkpoint\.ds_to_universal --inject_missing_state"):
            resume_source("auto", folder.parent, kind, 4)
        (folder / "universal" / "pytorch_model").mkdir(parents=True)  # a conversion killed half-way: not whole
        with pytest.raises(ValueError, match="ds_to_universal"):
            resume_source("auto", folder.parent, kind, 4)
        (folder / "universal" / "latest_universal").write_text("pytorch_model")
        assert resume_source("auto", folder.parent, kind, 4) == ResumeSource(folder, folder / "universal", True)
    with pytest.raises(ValueError, match="written under DeepSpeed ZeRO-3 and this launch runs one process or DDP"):
        resume_source("auto", (tmp_path / "zero3" / "checkpoints"), "plain", 2)
    assert resume_source("auto", tmp_path / "none", "plain", 1) is None and resume_source(None, tmp_path, "zero", 1) \
        is None


def test_throughput_waits_for_the_device_before_reading_the_clock(monkeypatch):
    """Tokens/s and MFU must count the time the device takes to run the queued steps: a simulated device that still
    has 3 s of work queued when the host reads the clock (its synchronize() returns 3 s later)."""
    import torch

    from tinyllama.training import metrics

    now = [100.0]
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def synchronize():
        now[0] += 3.0  # the device finishes its queued work

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    throughput = metrics.Throughput(flops_per_token=1e3, num_devices=1, peak_flops=1e6)
    now[0] += 1.0  # the host queues steps for 1 s
    throughput.update(8000)
    row = throughput.read()
    assert row["tokens_per_sec"] == 8000 / 4.0  # 1 s queueing + 3 s the device still ran (not 8000 / 1)
    assert row["mfu"] == 8000 / 4.0 * 1e3 / 1e6
