"""Throughput and model FLOPs utilization (MFU), and the run's metrics log.

MFU = tokens/s x FLOPs per token / (devices x peak FLOP/s), FLOPs per token = 6·N + 12·L·H·Q·T
(``tinyllama.model.flops_per_token``; TinyLlama's 56% on A100 uses the same convention). With a distillation
teacher, ``mfu`` stays the student's (comparable with plain runs) and ``mfu_with_teacher`` adds the teacher's
forward, 2·N_T + 4·L·H·Q·T per token.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

# Dense bf16 peak FLOP/s per device, by substring of torch.cuda.get_device_name() (first match wins).
PEAK_FLOPS = [
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("H800", 989e12), ("GH200", 989e12),
    ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12), ("A10G", 125e12),
    ("A10", 125e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("V100", 125e12), ("T4", 65e12),
]


def device_peak_flops(override: float | None = None) -> float | None:
    if override:
        return override
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((flops for key, flops in PEAK_FLOPS if key in name), None)


def synchronize_device() -> None:
    """Wait until the device has run the work queued so far. CUDA runs asynchronously: a host clock read without
    this measures when the steps were queued, not when they ran (and the next interval inherits the difference)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Throughput:
    """Tokens/s and MFU over the steps since the last ``read``, timed from device-synchronised clock reads."""

    def __init__(self, flops_per_token: float, num_devices: int, peak_flops: float | None,
                 teacher_flops_per_token: float = 0.0):
        self.flops_per_token = flops_per_token
        self.teacher_flops_per_token = teacher_flops_per_token  # a distillation teacher's forward (2·N_T + 4·L·H·Q·T)
        self.num_devices = num_devices
        self.peak_flops = peak_flops
        self.reset()

    def reset(self) -> None:
        synchronize_device()
        self.start = time.perf_counter()
        self.tokens = 0

    def update(self, tokens: int) -> None:
        self.tokens += tokens

    def read(self) -> dict:
        synchronize_device()
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        tps = self.tokens / elapsed
        out = {"tokens_per_sec": tps, "tokens_per_sec_per_device": tps / self.num_devices}
        if self.peak_flops:
            out["mfu"] = tps * self.flops_per_token / (self.num_devices * self.peak_flops)
            if self.teacher_flops_per_token:  # the same tokens/s counting the teacher's forward too
                out["mfu_with_teacher"] = tps * (self.flops_per_token + self.teacher_flops_per_token) / (
                    self.num_devices * self.peak_flops)
        self.reset()
        return out


def peak_memory_gb() -> float | None:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return None


class MetricsLog:
    """``logs/metrics.jsonl`` (one JSON object per line, appended; survives resumes) plus the accelerate trackers."""

    def __init__(self, accelerator, log_dir: Path):
        self.accelerator = accelerator
        self.path = Path(log_dir) / "metrics.jsonl"
        if accelerator.is_main_process:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, metrics: dict, step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        row = {"step": step, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.accelerator.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)
