"""The pretraining machinery that ``recipes/pretrain.py`` runs, top to bottom: arguments (``args.py``), the
accelerator and model setup (``core.py``), optimizer (``optim.py``), learning-rate and batch-size schedules
(``schedule.py``), throughput/MFU and the metrics log (``metrics.py``), checkpoints, exports and resume
(``checkpoint.py``), Hub uploads (``hub.py``).

The names below are imported lazily (on first use), so that ``from tinyllama.training import export_checkpoint``
works without importing accelerate or DeepSpeed for the rest.
"""

from __future__ import annotations

from ..utils import lazy_exports

_EXPORTS = {
    "DEMO_CONFIG": "args",
    "PretrainArgs": "args",
    "TrainState": "checkpoint",
    "complete_checkpoints": "checkpoint",
    "find_resume_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "export_model": "checkpoint",
    "export_checkpoint": "checkpoint",
    "make_accelerator": "core",
    "setup_model": "core",
    "HubUploader": "hub",
    "Throughput": "metrics",
    "MetricsLog": "metrics",
    "build_optimizer": "optim",
    "LRSchedule": "schedule",
    "BatchSchedule": "schedule",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
