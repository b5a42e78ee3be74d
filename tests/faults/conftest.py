"""The fault-injection suite: kills, preemption, full disks, Hub outages, non-finite losses, bad inputs.

CI runs the fast subset (``pytest tests/faults``); the cases marked ``faults_full`` run only with
``TINYLLAMA_FAULTS_FULL=1`` (``make faults``).
"""

import os

import pytest

FULL = os.environ.get("TINYLLAMA_FAULTS_FULL") == "1"


def pytest_collection_modifyitems(config, items):
    if FULL:
        return
    skip = pytest.mark.skip(reason="full fault suite: set TINYLLAMA_FAULTS_FULL=1 (make faults)")
    for item in items:
        if "faults_full" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def reference(tmp_path_factory, demo_paths):
    """The uninterrupted pretraining run (fault_utils.CHAIN_RUN) every resumed one must reproduce bitwise."""
    from fault_utils import CHAIN_RUN
    from pretrain_utils import run_inprocess, write_config

    tmp = tmp_path_factory.mktemp("faults-reference")
    cfg = write_config(tmp, CHAIN_RUN)
    run_inprocess(cfg, "--output_dir", str(tmp / "run"))
    return tmp / "run" / "export" / "final" / "model.safetensors"
