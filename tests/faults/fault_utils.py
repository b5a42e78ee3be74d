"""Helpers of the fault suite: launching a command with a fault, hashing folders, comparing weights."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAUNCH = str(Path(__file__).resolve().parent / "launch.py")
KILLED = -signal.SIGKILL

# the run the kill chains use (on top of pretrain_utils.TINY_RUN): 8 steps, a checkpoint and an export every 2
CHAIN_RUN = """
eval_every: 0
save_every: 2
keep_last: 2
"""

ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "WANDB_DISABLED": "true", "DISABLE_MLFLOW_INTEGRATION": "TRUE"}

# figures for docs/reliability.md: appended by the tests, one JSON line each
RECORD = Path(os.environ.get("TINYLLAMA_FAULTS_RECORD", REPO / "outputs" / "faults-record.jsonl"))


def record(kind: str, **fields) -> None:
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    with open(RECORD, "a") as f:
        f.write(json.dumps({"kind": kind, "time": time.strftime("%Y-%m-%d %H:%M:%S"), **fields}) + "\n")


def launch(script: str, args: list[str], fault: str | None = None, kill_after: float | None = None,
           env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``script`` under the fault launcher; ``fault`` (e.g. "kill@checkpoint:1") or a SIGKILL ``kill_after``
    seconds (a random moment: wherever it lands)."""
    full_env = {**os.environ, **ENV, **(env or {})}
    full_env.pop("TINYLLAMA_TEST_FAULT", None)
    if fault:
        full_env["TINYLLAMA_TEST_FAULT"] = fault
    proc = subprocess.Popen([sys.executable, LAUNCH, script, *args], cwd=REPO, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=kill_after if kill_after is not None else timeout)
    except subprocess.TimeoutExpired:
        if kill_after is None:
            proc.kill()
            raise
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def tree_hashes(root: Path) -> dict[str, str]:
    """Every file under ``root`` (symlinks as their target) -> sha256."""
    root = Path(root)
    out = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def same_weights(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


RESUMED = re.compile(r"resumed from (\S+): step (\d+)")


def resumed_from(output: str) -> str | None:
    m = RESUMED.search(output)
    return m.group(1) if m else None
