"""SIGKILL at chosen and at random moments (mid-step, mid-checkpoint-write, mid-export, mid-upload, mid-shard,
mid-SFT-save); every run is resumed until it finishes and must end bitwise equal to an uninterrupted run, and no
incomplete checkpoint may ever be picked up.

A chain is one run folder killed again and again: each element is a fault for one launch, then ``--resume auto``
(pretraining), a plain rerun (data preparation) or ``resume_from_checkpoint: last`` (SFT) carries on.
"""

from __future__ import annotations

import json
import random
import shutil
import time

import pytest

from fault_utils import CHAIN_RUN, KILLED, REPO, launch, record, resumed_from, same_weights, tree_hashes
from pretrain_utils import RecordingHub, write_config


pytestmark = pytest.mark.slow  # kills launched runs and resumes them; make test-fast skips it


def check_no_incomplete(run) -> None:
    """Every step-* checkpoint on disk is complete (train_state.json), whatever moment the kill hit."""
    for p in (run / "checkpoints").glob("step-*"):
        assert (p / "train_state.json").is_file() and (p / "model.safetensors").is_file(), p
    for p in (run / "export").glob("step-*"):
        assert (p / "model.safetensors").is_file() and (p / "training_metadata.json").is_file(), p


_WALL: list[float] = []  # seconds of one uninterrupted launch of the chain's run, measured once per session


def run_chain(tmp_path, reference, faults: list, name: str) -> int:
    """``faults``: "kill@point:n" strings, or fractions of an uninterrupted launch's wall time at which a SIGKILL
    lands wherever the run is then (a random moment). Returns the number of kills that landed; asserts the finished
    run's weights equal the reference's."""
    cfg = write_config(tmp_path, CHAIN_RUN + "push_to_hub: true\nhub_model_id: me/faults\nhub_upload_retries: 1\n"
                       "hub_retry_backoff: 0\n")
    run = tmp_path / "run"
    landed, log = 0, []
    with RecordingHub() as hub:
        env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_fault_suite"}
        args = ["--config", str(cfg), "--output_dir", str(run), "--resume", "auto"]
        if not _WALL and any(isinstance(f, float) for f in faults):  # calibrate: the machine's speed varies a lot
            start = time.perf_counter()
            calib = launch("recipes/pretrain.py", ["--config", str(cfg), "--output_dir", str(tmp_path / "calib")],
                           env=env)
            assert calib.returncode == 0, calib.stdout[-3000:]
            _WALL.append(time.perf_counter() - start)
        for fault in [*faults, None]:
            delay = round(fault * _WALL[0], 2) if isinstance(fault, float) else None
            complete_before = {p.name for p in (run / "checkpoints").glob("step-*")
                               if (p / "train_state.json").is_file()}  # (later launches may rotate them away)
            proc = launch("recipes/pretrain.py", args, fault=fault if isinstance(fault, str) else None,
                          kill_after=delay, env=env)
            src = resumed_from(proc.stdout)
            if src is not None:  # only ever a complete step-* checkpoint
                assert "/checkpoints/step-" in src and ".tmp" not in src, src
                assert src.rsplit("/", 1)[-1] in complete_before, (src, complete_before)
            if fault is None:
                assert proc.returncode == 0, proc.stdout[-3000:]
                break
            if proc.returncode == KILLED:
                landed += 1
                where = f"resumed from {src.rsplit('/', 1)[-1]}" if src else "fresh start"
                log.append(f"{fault if delay is None else f'{delay}s'}: killed ({where})")
            else:  # a random moment after the run had already finished
                assert proc.returncode == 0 and isinstance(fault, (int, float)), proc.stdout[-3000:]
                log.append(f"{fault}: finished before the kill")
                shutil.rmtree(run)  # start the next fault from scratch, so it lands
            assert isinstance(fault, (int, float)) or proc.returncode == KILLED, (fault, proc.stdout[-3000:])
            check_no_incomplete(run)
    assert same_weights(run / "export" / "final" / "model.safetensors", reference), f"{name}: weights differ"
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    assert not [p for p in (run / "export").iterdir() if p.name.startswith(".tmp")]
    record("pretrain_kill_chain", chain=name, faults=[str(f) for f in faults], landed=landed, log=log, exact=True)
    return landed


def delays(seed: int, n: int) -> list[float]:
    """Random moments, as fractions of an uninterrupted launch (start-up included, so the early ones land in
    imports and data checks, most in training, checkpoints, exports and uploads)."""
    rng = random.Random(seed)
    return [round(rng.uniform(0.5, 0.98), 3) for _ in range(n)]


def test_pretrain_kill_points_fast(tmp_path, reference):
    """CI: mid-step, mid-checkpoint, mid-export and mid-upload; resumed exactly. (Random moments need a calibration
    launch first: they are make faults' test_pretrain_kill_points_random.)"""
    landed = run_chain(tmp_path, reference, ["kill@step:6", "kill@checkpoint:1", "kill@export:1", "kill@upload:1"],
                       "fast")
    assert landed == 4


@pytest.mark.faults_full
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pretrain_kill_points_random(tmp_path, reference, seed):
    """Named points in another order, then random moments from a fixed seed list."""
    rng = random.Random(seed)
    points = ["kill@step:%d" % rng.randint(1, 12), "kill@checkpoint:%d" % rng.randint(1, 2),
              "kill@export:%d" % rng.randint(1, 2), "kill@upload:1"]
    rng.shuffle(points)
    landed = run_chain(tmp_path, reference, [*points, *delays(seed, 3)], f"seed{seed}")
    assert landed >= 5


# ---- data preparation -----------------------------------------------------------------------------------------
PREP = """\
tokenizer: {repo}/data/demo/tokenizer
output_dir: {out}
bos: true
eos: false
shard_tokens: 20000
validation_every: 20
validation_documents: 25
sources:
  slimpajama:
    path: {repo}/data/demo/raw/slimpajama/train.jsonl
    text_field: text
  starcoderdata:
    path: {repo}/data/demo/raw/starcoderdata
    text_field: content
"""


def shard_files(out) -> dict:
    return {k: v for k, v in tree_hashes(out).items() if k.endswith((".bin", ".idx"))}


@pytest.fixture(scope="session")
def prep_reference(tmp_path_factory, demo_paths):
    from tinyllama.data import prepare_data

    tmp = tmp_path_factory.mktemp("prep-reference")
    cfg = tmp / "prep.yaml"
    cfg.write_text(PREP.format(repo=REPO, out=tmp / "out"))
    prepare_data(["--config", str(cfg)])
    hashes = shard_files(tmp / "out")
    assert len(hashes) >= 6
    return hashes


def prep_chain(tmp_path, prep_reference, faults: list[str]) -> int:
    cfg = tmp_path / "prep.yaml"
    cfg.write_text(PREP.format(repo=REPO, out=tmp_path / "out"))
    landed = 0
    for fault in [*faults, None]:
        proc = launch("scripts/prepare_data.py", ["--config", str(cfg)], fault=fault)
        if fault is None:
            assert proc.returncode == 0, proc.stdout[-3000:]
        else:
            assert proc.returncode == KILLED, (fault, proc.stdout[-3000:])
            landed += 1
    assert shard_files(tmp_path / "out") == prep_reference
    assert not [p for p in (tmp_path / "out").rglob(".tmp-*")]
    record("prepare_kill_chain", faults=faults, landed=landed, exact=True)
    return landed


@pytest.mark.faults_full  # (make test: tests/test_data_prepare.py's killed preparation)
def test_prepare_killed_mid_shard_resumes_identically(tmp_path, prep_reference):
    assert prep_chain(tmp_path, prep_reference, ["kill@shard:2", "kill@shard_add:3"]) == 2


@pytest.mark.faults_full  # (make test: tests/test_data_prepare.py's killed preparation)
def test_prepare_worker_killed_stops_clearly_and_the_rerun_resumes_identically(tmp_path):
    """A tokenizer worker killed from outside (the out-of-memory killer) used to hang the run forever
    (multiprocessing.Pool loses the task); now the run stops at once with exit 3 and a message, and the same
    command resumes to the shards of an uninterrupted run."""
    def config(name):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(PREP.format(repo=REPO, out=tmp_path / name) + "num_workers: 2\nbatch_rows: 8\n")
        return ["--config", str(cfg)]

    assert launch("scripts/prepare_data.py", config("straight")).returncode == 0
    proc = launch("scripts/prepare_data.py", config("out"), fault="kill@worker:24", timeout=120)
    assert "[fault] SIGKILL to worker process" in proc.stdout, proc.stdout[-3000:]
    assert proc.returncode == 3, proc.stdout[-3000:]
    assert "error: a tokenizer worker process died" in proc.stdout and "Traceback" not in proc.stdout
    manifest = json.loads((tmp_path / "out" / "slimpajama" / "manifest.json").read_text())
    assert manifest["splits"]["train"] and not manifest["complete"]  # stopped mid-source, with shards to resume from
    proc = launch("scripts/prepare_data.py", config("out"))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert shard_files(tmp_path / "out") == shard_files(tmp_path / "straight")
    assert not [p for p in (tmp_path / "out").rglob(".tmp-*")]
    record("prepare_worker_killed", exact=True)


@pytest.mark.faults_full
def test_prepare_killed_repeatedly(tmp_path, prep_reference):
    assert prep_chain(tmp_path, prep_reference, ["kill@shard_add:1", "kill@shard:1", "kill@shard:3",
                                                 "kill@shard_add:7"]) == 4


@pytest.mark.faults_full
def test_prepare_with_dedup_killed_between_index_and_manifest_resumes_identically(tmp_path):
    """With deduplication on, ``kill@shard`` lands after the dedup index has committed and before the manifest
    records the shard: the rerun must forget the index's extra rows, or it would drop the next documents as
    duplicates of themselves."""
    from tinyllama.data import prepare_data

    def config(name):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(PREP.format(repo=REPO, out=tmp_path / name) + "dedup: true\n")
        return ["--config", str(cfg)]

    prepare_data(config("straight"))
    for fault in ("kill@shard:2", "kill@shard_add:5", None):
        proc = launch("scripts/prepare_data.py", config("out"), fault=fault)
        assert proc.returncode == (0 if fault is None else KILLED), (fault, proc.stdout[-3000:])
    assert shard_files(tmp_path / "out") == shard_files(tmp_path / "straight")
    for source in ("slimpajama", "starcoderdata"):
        stats = [json.loads((tmp_path / d / source / "manifest.json").read_text())["stats"] for d in ("out", "straight")]
        assert stats[0] == stats[1]
    record("prepare_dedup_kill_chain", exact=True)


# ---- SFT with LoRA --------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def sft_setup(tmp_path_factory, demo_paths):
    from chat_helpers import tiny_lora_sft_run

    tmp = tmp_path_factory.mktemp("sft-faults")
    _, _, cli = tiny_lora_sft_run(tmp, save_steps=2)

    straight = tmp / "straight"
    proc = launch("recipes/sft.py", cli(straight))
    assert proc.returncode == 0, proc.stdout[-3000:]
    return cli, straight


def sft_chain(tmp_path, sft_setup, faults: list[str]) -> int:
    cli, straight = sft_setup
    out = tmp_path / "sft"
    landed = 0
    for i, fault in enumerate([*faults, None]):
        extra = ["--resume_from_checkpoint", "last"] if i and list(out.glob("checkpoint-*/trainer_state.json")) \
            else []
        proc = launch("recipes/sft.py", cli(out, *extra), fault=fault)
        if fault is None:
            assert proc.returncode == 0, proc.stdout[-3000:]
        else:
            assert proc.returncode == KILLED, (fault, proc.stdout[-3000:])
            landed += 1
    assert same_weights(out / "adapter_model.safetensors", straight / "adapter_model.safetensors")
    record("sft_kill_chain", faults=faults, landed=landed, exact=True)
    return landed


@pytest.mark.faults_full
def test_sft_lora_killed_mid_save_and_mid_step_resumes_exactly(tmp_path, sft_setup):
    """The kill mid-save leaves checkpoint-4 without trainer_state.json: 'last' must take checkpoint-2."""
    assert sft_chain(tmp_path, sft_setup, ["kill@sft_save:2", "kill@sft_step:2"]) == 2
