"""The GPU tier (``make test-gpu``): checks of the GPU path that the CPU suite cannot make.

Every test here is marked ``gpu``; tests/conftest.py skips them without CUDA, unless
``TINYLLAMA_GPU_TIER_ON_CPU=1``, which runs the same tests on CPU instead (tiny model, fp32, float64 references),
so that the test code itself is proven before any GPU runs it; checks with no CPU meaning (flash-attn, Liger, bitsandbytes) skip there with their reason.

Measured values (peak memory, MFU, errors against the reference) are printed in a table at the end of the run, so
the log of a GPU session records them.
"""

import pytest
import torch

from gpu_tier_utils import Tier, current_tier

_RECORDS: list[tuple[str, str, object]] = []


@pytest.fixture(scope="session")
def tier() -> Tier:
    return current_tier()


@pytest.fixture
def record(request):
    """record(name, value): print a measurement now and list it in the summary at the end of the run."""

    def _record(name: str, value) -> None:
        print(f"[gpu tier] {request.node.name}: {name} = {value}")
        _RECORDS.append((request.node.name, name, value))

    return _record


def pytest_terminal_summary(terminalreporter):
    if not _RECORDS:
        return
    where = "CPU (TINYLLAMA_GPU_TIER_ON_CPU=1)" if current_tier().device == "cpu" else torch.cuda.get_device_name()
    terminalreporter.write_sep("=", f"GPU tier measurements on {where}")
    for test, name, value in _RECORDS:
        terminalreporter.write_line(f"{test}: {name} = {value}")
