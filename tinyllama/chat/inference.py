"""What ``scripts/chat.py`` and ``scripts/benchmark_inference.py`` share."""

from __future__ import annotations


class ForwardCounter:
    """Counts a model's forward passes while attached (a drafted reply takes fewer of the big model's forward
    passes than it has tokens; scripts/chat.py and scripts/benchmark_inference.py report them)."""

    def __init__(self, model):
        self.calls = 0
        self._handle = model.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1

    def remove(self) -> None:
        self._handle.remove()
