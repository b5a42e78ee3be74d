"""Preemption (SIGTERM), a full disk during a checkpoint, Hub outages (refused, 500, hang) and non-finite losses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from fault_utils import CHAIN_RUN, ENV, LAUNCH, REPO, launch, record, same_weights
from pretrain_utils import RecordingHub, run_inprocess, write_config


pytestmark = pytest.mark.slow  # launched runs stopped from outside; make test-fast skips it


def test_sigterm_saves_a_checkpoint_and_exits_in_bounded_time(tmp_path, demo_paths):
    """A real SIGTERM from outside mid-run: the step finishes, a checkpoint is saved, the process exits 0."""
    cfg = write_config(tmp_path, CHAIN_RUN + "save_every: 100\nmax_steps: 200\n")
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, LAUNCH, "recipes/pretrain.py", "--config", str(cfg), "--output_dir",
                             str(run)], cwd=REPO, env={**os.environ, **ENV}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    metrics = run / "logs" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.time() < deadline, "run did not start"
        time.sleep(0.2)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    took = time.time() - sent
    assert proc.returncode == 0, out[-3000:]
    assert "stop requested (SIGTERM)" in out
    saved = sorted((run / "checkpoints").glob("step-*"))
    assert len(saved) == 1 and (saved[0] / "train_state.json").is_file()
    state = json.loads((saved[0] / "train_state.json").read_text())
    assert 2 <= state["step"] < 200
    assert took < 60, f"took {took:.1f}s to save and exit after SIGTERM"
    record("sigterm", step=state["step"], seconds=round(took, 1))


def test_disk_full_during_checkpoint_stops_clearly_and_keeps_the_previous(tmp_path, reference):
    cfg = write_config(tmp_path, CHAIN_RUN)
    run = tmp_path / "run"
    args = ["--config", str(cfg), "--output_dir", str(run), "--resume", "auto"]
    proc = launch("recipes/pretrain.py", args, fault="enospc@checkpoint:2")
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout
    err = [line for line in proc.stdout.splitlines() if line.startswith("error: ")]
    assert err and "no space left on device while writing checkpoint" in err[0], proc.stdout[-2000:]
    assert str(run / "checkpoints" / "step-000004") in err[0]
    assert f"previous checkpoint {run / 'checkpoints' / 'step-000002'} is intact" in err[0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002"]  # partial one removed
    # the previous checkpoint loads: the run resumes from it and ends exactly where an uninterrupted one does
    proc = launch("recipes/pretrain.py", args)
    assert proc.returncode == 0 and "resumed from" in proc.stdout and "step-000002" in proc.stdout
    assert same_weights(run / "export" / "final" / "model.safetensors", reference)
    record("disk_full", message=err[0][:300], resumed_exactly=True)


def hub_run(tmp_path, endpoint: str, retries: int = 2, wait: str | None = None) -> tuple[dict, str]:
    """A 4-step run pushing each export to ``endpoint`` (a real process: huggingface_hub reads its settings at
    import); returns the summary and the log."""
    cfg = write_config(tmp_path, CHAIN_RUN + f"max_steps: 4\npush_to_hub: true\nhub_model_id: me/faults\n"
                       f"hub_upload_retries: {retries}\nhub_retry_backoff: 0\n"
                       + (f"hub_wait_timeout: {wait}\n" if wait else ""))
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": endpoint, "HF_TOKEN": "hf_fault_suite"}
    t = time.time()
    proc = launch("recipes/pretrain.py", ["--config", str(cfg), "--output_dir", str(tmp_path / "run")], env=env)
    assert proc.returncode == 0, proc.stdout[-3000:]  # training went on
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    summary["seconds"] = round(time.time() - t, 1)
    assert summary["step"] == 4
    assert (tmp_path / "run" / "export" / "final" / "model.safetensors").is_file()  # exports stay on disk
    return summary, proc.stdout


@pytest.mark.faults_full  # (make test: tests/test_pretrain.py's Hub retry and outage)
def test_hub_refusing_connections_is_retried_and_reported(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    summary, err = hub_run(tmp_path, f"http://127.0.0.1:{port}")
    assert summary["hub_failed"] == 2 and summary["hub_uploaded"] == 0  # exports of step 2 and 4
    assert summary["hub_attempts"] == 4  # each tried twice
    assert "failed after 2 attempts" in err and "training goes on" in err
    record("hub_refused", **{k: summary[k] for k in ("hub_failed", "hub_attempts", "seconds")})


@pytest.mark.faults_full  # (make test: tests/test_pretrain.py's Hub retry and outage)
def test_hub_failing_commit_is_retried_then_succeeds(tmp_path):
    with RecordingHub(fail_first=1, fail_status=400) as hub:
        summary, err = hub_run(tmp_path, hub.url)
    assert summary["hub_uploaded"] == 2 and summary["hub_failed"] == 0 and summary["hub_attempts"] == 3
    assert "retrying" in err and len(hub.commits) == 2
    record("hub_commit_error_retried", **{k: summary[k] for k in ("hub_uploaded", "hub_attempts", "seconds")})


@pytest.mark.faults_full
def test_hub_500_is_retried(tmp_path):
    with RecordingHub(fail_first=1, fail_status=500) as hub:
        summary, err = hub_run(tmp_path, hub.url)
    assert summary["hub_uploaded"] == 2 and summary["hub_failed"] == 0 and len(hub.commits) == 2
    record("hub_500_retried", **{k: summary[k] for k in ("hub_uploaded", "hub_attempts", "seconds")})


@pytest.mark.faults_full  # (make test: tests/test_pretrain.py's Hub retry and outage)
def test_hub_hanging_does_not_hold_the_run(tmp_path):
    with RecordingHub(hang=True) as hub:
        summary, err = hub_run(tmp_path, hub.url, wait="3")
    assert summary["hub_uploaded"] == 0 and summary["hub_pending"] + summary["hub_failed"] >= 1  # reported
    assert "uploads still running after 3s" in err or "failed after 2 attempts" in err
    assert summary["seconds"] < 300  # a hung Hub does not hold the run
    record("hub_hang", **{k: summary[k] for k in ("hub_pending", "hub_failed", "seconds")})


def test_nonfinite_steps_are_skipped_and_counted(tmp_path, monkeypatch, demo_paths):
    cfg = write_config(tmp_path, CHAIN_RUN + "max_steps: 4\n")
    summary = run_inprocess(cfg, "--output_dir", str(tmp_path / "run"), nan_steps={1})
    assert summary["step"] == 4 and summary["skipped_steps"] == 1
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-000004" / "train_state.json").read_text())
    assert state["skipped_steps"] == 1 and state["consecutive_nonfinite"] == 0
    record("nonfinite_skip", skipped=1)


def test_consecutive_nonfinite_steps_stop_the_run_with_exit_3(tmp_path, monkeypatch, demo_paths, capsys):
    cfg = write_config(tmp_path, CHAIN_RUN + "max_steps: 6\nmax_nonfinite_steps: 2\n")
    with pytest.raises(SystemExit) as e:
        run_inprocess(cfg, "--output_dir", str(tmp_path / "run"), nan_steps={2, 3})
    assert e.value.code == 3
    err = capsys.readouterr().err
    assert "error: 2 consecutive steps had a non-finite loss or gradient" in err and "resume" in err
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*")] == ["step-000002"]
    record("nonfinite_stop", exit=3)
