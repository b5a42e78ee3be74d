"""The pretraining machinery that ``recipes/pretrain.py`` runs, top to bottom: arguments (``args.py``), the
accelerator and model setup (``core.py``), optimizer (``optim.py``), learning-rate and batch-size schedules
(``schedule.py``), throughput/MFU and the metrics log (``metrics.py``), what the loop does at a checkpoint step
(``checkpointer.py``: state, export, upload, the hooks on each export), Hub uploads (``hub.py``). The folders a run
writes (checkpoints, exports, what a resume reads) are ``tinyllama.checkpoints``, below this package: evaluation
and the pipeline read them too.

The names below are imported lazily (on first use), so that importing one does not load accelerate or DeepSpeed
for the rest.
"""

from __future__ import annotations

from ..utils import lazy_exports

_EXPORTS = {
    "DEMO_CONFIG": "args",
    "PretrainArgs": "args",
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
