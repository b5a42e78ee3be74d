"""The GPU tier's wheel set (scripts/gpu/wheels.py), as a bare GPU machine uses it: it installs into an empty folder,
that folder first on PYTHONPATH gives the tier its packages, and the tier collects. Needs a set fetched for this
machine's Python, which takes PyPI: `make test-gpu-wheels` fetches it and runs this (TINYLLAMA_GPU_WHEELS names the
folder); elsewhere it is skipped with that reason (tests/conftest.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain_utils import REPO

pytestmark = pytest.mark.gpu_wheels
# what the tier imports that a bare CUDA torch image lacks (liger_kernel needs triton, which a CPU torch has not)
PACKAGES = ["transformers", "accelerate", "deepspeed", "trl", "peft", "datasets", "bitsandbytes", "pyarrow",
            "tokenizers", "safetensors", "huggingface_hub", "pytest", "yaml"]


def test_the_wheel_set_installs_into_an_empty_folder_and_the_tier_collects(tmp_path):
    wheels = Path(os.environ["TINYLLAMA_GPU_WHEELS"])
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "scripts/gpu/wheels.py", "install", "--wheels", str(wheels),
                           "--target", str(target)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (target / "liger_kernel").is_dir() and list(target.glob("bitsandbytes/libbitsandbytes_cuda*.so"))
    env = {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{REPO}", "HF_HUB_OFFLINE": "1"}
    where = subprocess.run([sys.executable, "-c", f"import {', '.join(PACKAGES)}; "
                            f"print('\\n'.join(m.__file__ for m in ({', '.join(PACKAGES)})))"],
                           env=env, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr[-3000:]
    files = [line for line in where.stdout.splitlines() if line.endswith(".py")]  # (DeepSpeed prints to stdout)
    assert len(files) == len(PACKAGES), where.stdout
    outside = [f for f in files if not f.startswith(str(target))]
    assert not outside, f"imported from outside the set: {outside}"
    collected = {}
    for name, path in (("with the set", env["PYTHONPATH"]), ("without", str(REPO))):
        proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "tests/gpu",
                               "-p", "no:cacheprovider"], cwd=REPO, env={**env, "PYTHONPATH": path},
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        collected[name] = sorted(line for line in proc.stdout.splitlines() if line.startswith("tests/gpu/"))
    assert len(collected["with the set"]) >= 15 and collected["with the set"] == collected["without"]
