"""The v1.1 stages on the demo, trained for a few steps with the tiny model: a stage starts from the previous stage's
weights exactly (export or checkpoint, optimizer fresh or carried over), the logged source shares follow the
configured ramp, a batch-size change keeps tokens and the data position exact, and an interrupted stage resumes
exactly (its own data position, not its init_from)."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pretrain_utils import REPO, losses, metrics, run_inprocess
from tinyllama.config import ConfigError, load_yaml, parse_config
from tinyllama.data import MixtureDataset, parse_mixture
from tinyllama.training.args import PretrainArgs, continued_lr_step, require_resolved
from tinyllama.training.schedule import BatchSchedule, LRSchedule

DEMO = [f"--data_dir={REPO}/data/demo/tokenized", f"--tokenizer={REPO}/data/demo/tokenizer",
        f"--prepare_config={REPO}/configs/data/demo.yaml"]


def stage(config: str, out, *overrides: str, **faults) -> dict:
    """A shipped demo stage config, shrunk by ``overrides``, run in this process into ``out`` (``faults``: those of
    run_inprocess)."""
    return run_inprocess(REPO / "configs" / config, *DEMO, "--output_dir", str(out), "--report_to", "none",
                         "--eval_every", "0", *overrides, **faults)


def weights(folder) -> dict:
    return load_file(str(folder / "model.safetensors"))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def basic(tmp_path_factory, demo_paths):
    """Stage 1 (demo config, tiny model, 4 steps, checkpoints at 2 and 4)."""
    out = tmp_path_factory.mktemp("stages") / "basic"
    stage("pretrain/demo-stage1-basic.yaml", out, "--model_config", "tiny", "--max_steps", "4",
          "--lr_schedule_steps", "20", "--save_every", "2", "--keep_last", "2")
    return out


# the continual stage of the tests: ramped mixture, a batch change at step 3, 6 steps, checkpoints every 2
RAMPED = ["--max_steps", "6", "--lr_schedule_steps", "20", "--lr_step_offset", "4", "--save_every", "2",
          "--keep_last", "5", "--batch_schedule", "[{step: 3, global_batch_size: 64}]",
          "--mixture", "{slimpajama: {weight: 0.5, start_weight: 1.0, ramp_tokens: 8192}, "
                       "starcoderdata: {weight: 0.3, start_weight: 0.0, ramp_tokens: 8192}, proof_pile_2: 0.2}"]


@pytest.fixture(scope="module")
def continual(basic):
    """Stage 2 from stage 1's export, uninterrupted: the reference for the resume test."""
    out = basic.parent / "continual"
    summary = stage("continual/demo-math_code.yaml", out, "--init_from", str(basic / "export" / "final"), *RAMPED)
    return out, summary


def test_stage_starts_from_the_previous_export_exactly(basic, continual):
    run, _ = continual
    initial = weights(run / "export" / "initial")
    assert same(initial, weights(basic / "export" / "final"))  # the very tensors stage 1 ended with
    assert not same(initial, weights(run / "export" / "final"))  # ... and it trained from there
    meta = json.loads((run / "export" / "initial" / "training_metadata.json").read_text())
    assert meta["step"] == 0 and meta["init_from"] == str(basic / "export" / "final") and meta["stage"] == "continual"
    saved = load_yaml(run / "config.yaml")
    assert saved["init_from"] == str(basic / "export" / "final") and saved["resume"] is None


@pytest.mark.parametrize("carry", [False, True])
def test_init_from_a_checkpoint_with_fresh_or_carried_optimizer(basic, tmp_path, carry):
    ckpt = basic / "checkpoints" / "step-000004"
    out = tmp_path / "run"
    stage("continual/demo-general.yaml", out, "--init_from", str(ckpt), "--init_optimizer", str(carry).lower(),
          "--max_steps", "1", "--lr_schedule_steps", "20", "--lr_step_offset", "4")
    assert same(weights(out / "export" / "initial"), weights(ckpt))
    # AdamW's per-parameter step count: carried over (4 steps of stage 1 + this one) or fresh
    state = torch.load(out / "checkpoints" / "step-000001" / "optimizer.bin", weights_only=True)["state"]
    assert {float(s["step"]) for s in state.values()} == {5.0 if carry else 1.0}
    # the data position is this stage's own, whatever the weights' origin
    assert json.loads((out / "checkpoints" / "step-000001" / "train_state.json").read_text())["samples"] == 32


def test_init_optimizer_needs_a_checkpoint_not_an_export(basic):
    with pytest.raises(ConfigError, match="not a checkpoint folder"):
        parse_config(PretrainArgs, ["--config", str(REPO / "configs/continual/demo-general.yaml"), "--init_from",
                                    str(basic / "export" / "final"), "--init_optimizer", "true"])


def test_batch_change_keeps_tokens_and_data_position_exact(continual):
    run, summary = continual
    rows = [r for r in metrics(run) if "lr" in r]
    batches = BatchSchedule(32, ((3, 64),))
    assert [r["global_batch"] for r in rows] == [32, 32, 32, 64, 64, 64]
    assert [r["tokens_seen"] for r in rows] == [batches.samples_before(s + 1) * 64 for s in range(6)]
    assert summary["tokens"] == (3 * 32 + 3 * 64) * 64
    assert json.loads((run / "checkpoints" / "step-000006" / "train_state.json").read_text())["samples"] == 288
    # the sources the loop actually read, step by step, are the ones the mixture places at exactly those sample
    # indices: no sample replayed or skipped across the batch change
    (args,) = parse_config(PretrainArgs, ["--config", str(run / "config.yaml")])
    data = MixtureDataset(args.data_dir, parse_mixture(args.mixture), seq_len=args.seq_len, seed=args.seed)
    for s, r in enumerate(rows):
        planned = data.source_counts(batches.samples_before(s), batches.samples_before(s + 1))
        read = [round(r[f"mix/{n}"] * r["global_batch"]) for n in data.source_names]
        assert read == planned.tolist(), s


def test_interrupted_stage_resumes_exactly(basic, continual, tmp_path, monkeypatch):
    """Preempted after step 4 (after the batch change, inside the ramp), resumed with --resume auto: the same
    losses and weights as the uninterrupted stage; the resume reads its own checkpoint, not init_from."""
    ref, _ = continual
    out = tmp_path / "continual"
    args = ["--init_from", str(basic / "export" / "final"), *RAMPED]
    assert stage("continual/demo-math_code.yaml", out, *args, sigterm_after_step=4)["step"] == 4
    initial_before = weights(out / "export" / "initial")
    assert stage("continual/demo-math_code.yaml", out, *args, "--resume", "auto")["step"] == 6
    assert losses(out) == losses(ref) and len(losses(ref)) == 6
    assert same(weights(out / "export" / "final"), weights(ref / "export" / "final"))
    assert same(weights(out / "export" / "initial"), initial_before)  # not re-exported from the resumed weights


def test_logged_source_shares_follow_the_configured_ramp(basic, tmp_path):
    """demo-math_code's ramp, kept at the same number of samples (2 blocks of 1,024) with 16-token samples: the
    shares read in each block of the stream equal the configured weights there, to within a sample."""
    config = REPO / "configs" / "continual" / "demo-math_code.yaml"
    mixture = load_yaml(config)["mixture"]
    seq_len, old_seq_len = 16, load_yaml(REPO / "configs" / "pretrain" / "demo-stage1-basic.yaml")["seq_len"]
    for spec in mixture.values():
        spec["ramp_tokens"] = spec["ramp_tokens"] * seq_len // old_seq_len
    out = tmp_path / "ramp"
    stage("continual/demo-math_code.yaml", out, "--init_from", str(basic / "export" / "final"),
          "--seq_len", str(seq_len), "--global_batch_size", "64", "--micro_batch_size", "64", "--max_steps", "48",
          "--lr_schedule_steps", "60", "--lr_step_offset", "4", "--save_every", "48", "--mixture", json.dumps(mixture))
    rows = [r for r in metrics(out) if "lr" in r]
    names = list(mixture)
    counts = np.array([[r[f"mix/{n}"] * 64 for n in names] for r in rows])  # samples of each source, per step
    per_block = counts.reshape(3, 16, len(names)).sum(axis=1)  # 16 steps x 64 samples = one 1,024-sample block
    ws = parse_mixture(mixture)
    for b in range(3):
        mid = (b + 0.5) * 1024 * seq_len  # the ramp is linear within each block: its mean is the midpoint's value
        w = np.array([m.at(np.array(mid)) for m in ws])
        assert np.abs(per_block[b] - 1024 * w / w.sum()).max() <= 1.0 + 1e-6, (b, per_block[b], w)
    code = names.index("starcoderdata")
    assert per_block[0, code] < per_block[1, code] < per_block[2, code] == pytest.approx(0.15 * 1024, abs=1)
    assert counts[:4, code].sum() < counts[-4:, code].sum()


def test_continue_takes_the_offset_from_the_previous_export_and_the_cosine_goes_on(basic, continual, tmp_path):
    """``lr_step_offset: continue`` (the demo continual and cooldown configs) = where init_from's schedule stopped:
    its offset + its steps, read from its export (or checkpoint) at start-up. The run saves the number it used, and
    its first learning rate is the one the previous stage's schedule would have used next."""
    run, _ = continual
    assert json.loads((run / "export" / "final" / "training_metadata.json").read_text())["lr_step_offset"] == 4
    assert continued_lr_step(str(basic / "export" / "final")) == 4  # stage 1: offset 0, 4 steps
    assert continued_lr_step(str(run / "export" / "final")) == 4 + 6  # the continual stage: offset 4, 6 steps
    assert continued_lr_step(str(basic / "checkpoints" / "step-000002")) == 2  # a checkpoint, mid-run
    out = tmp_path / "cooldown"
    stage("cooldown/demo-math_code.yaml", out, "--init_from", str(run / "export" / "final"), "--max_steps", "2",
          "--lr_schedule_steps", "20", "--global_batch_size", "32", "--save_every", "2")
    assert load_yaml(REPO / "configs" / "cooldown" / "demo-math_code.yaml")["lr_step_offset"] == "continue"
    assert load_yaml(out / "config.yaml")["lr_step_offset"] == 10  # the number it ran with
    (previous,) = parse_config(PretrainArgs, ["--config", str(run / "config.yaml")])
    schedule = LRSchedule.from_args(previous)  # the continual stage's: offset 4, 20 steps in all
    before = [r["lr"] for r in metrics(run) if "lr" in r]
    after = [r["lr"] for r in metrics(out) if "lr" in r]
    assert before[-1] == pytest.approx(schedule(5), abs=1e-6)  # (the log rounds to 6 decimals)
    assert after == pytest.approx([schedule(6), schedule(7)], abs=1e-6)
    # (still inside the demo's 20-step warmup: the lr goes on rising, where a restart would begin again at 0)
    assert after[0] > before[-1] > 0 and LRSchedule.from_args(dataclasses.replace(previous, lr_step_offset=0))(0) == 0


def test_continue_is_refused_where_it_cannot_be_resolved(tmp_path):
    """One message naming the cause, at parse time (before any work) where it can be known then."""
    demo = ["--config", str(REPO / "configs" / "continual" / "demo-general.yaml")]
    with pytest.raises(ConfigError, match="TinyLlama/TinyLlama_v1.1 is a Hub id.*Set lr_step_offset to a number"):
        parse_config(PretrainArgs, [*demo, "--init_from", "TinyLlama/TinyLlama_v1.1"])
    with pytest.raises(ConfigError, match="must be a number of steps or 'continue', got 'contine'"):
        parse_config(PretrainArgs, [*demo, "--lr_step_offset", "contine"])
    with pytest.raises(ConfigError, match="'lr_step_offset: continue' needs 'init_from'"):
        parse_config(PretrainArgs, [*demo, "--init_from", "null", "--model_config", "tiny"])
    (tmp_path / "model").mkdir()
    with pytest.raises(ConfigError, match="neither training_metadata.json nor train_state.json"):
        parse_config(PretrainArgs, [*demo, "--init_from", str(tmp_path / "model")])
    # a folder the stage before has yet to write parses (a pipeline is planned ahead) and is refused at start-up
    (args,) = parse_config(PretrainArgs, [*demo, "--init_from", str(tmp_path / "later")])
    assert args.lr_step_offset == "continue"
    with pytest.raises(ValueError, match="later does not exist"):
        require_resolved(args)
    # an export written before the metadata recorded the offset: its run's config.yaml has it
    old = tmp_path / "old-run" / "export" / "step-000007"
    old.mkdir(parents=True)
    (old / "training_metadata.json").write_text(json.dumps({"step": 7, "tokens_seen": 7168}))
    (tmp_path / "old-run" / "config.yaml").write_text("lr_step_offset: 3\n")
    assert continued_lr_step(str(old)) == 10


def test_a_resumed_stage_keeps_the_offset_it_started_with(basic, tmp_path):
    """If init_from was retrained after the stage started, 'continue' would now give another number: resuming is
    refused instead of the learning rate jumping mid-stage; with the same init_from it resumes."""
    out = tmp_path / "cooldown"
    (out / "checkpoints" / "step-000001").mkdir(parents=True)
    (out / "checkpoints" / "step-000001" / "train_state.json").write_text(json.dumps({"step": 1}))
    (out / "config.yaml").write_text("lr_step_offset: 10\n")  # started from an init_from that had stopped at 10
    argv = ["--config", str(REPO / "configs" / "cooldown" / "demo-general.yaml"), "--output_dir", str(out),
            "--init_from", str(basic / "export" / "final"), "--resume", "auto"]
    (args,) = parse_config(PretrainArgs, argv)
    assert args.lr_step_offset == 4
    with pytest.raises(ValueError, match="started with 10 .* would resume with 4: the learning rate would jump"):
        require_resolved(args)
    (out / "config.yaml").write_text("lr_step_offset: 4\n")
    (args,) = parse_config(PretrainArgs, argv)
    require_resolved(args)
    assert args.lr_step_offset == 4
