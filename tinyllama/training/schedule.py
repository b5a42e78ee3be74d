"""Learning-rate and batch-size schedules, as pure functions of the optimizer step.

- ``cosine``: TinyLlama's (lit_gpt ``get_lr``): linear warmup from 0, cosine to ``min_lr`` at the schedule's end.
  With ``lr_step_offset``/``lr_schedule_steps`` a stage continues a longer cosine where the previous stage left it
  (v1.1's cooldown kept the cosine unchanged).
- ``wsd``: warmup-stable-decay: the peak until the last ``decay_fraction`` of steps, then a linear, 1-sqrt or
  cosine decay to ``min_lr`` (MiniCPM / DeepSeek style; the cooldown TinyLlama said it could not use).
- ``constant``: warmup, then the peak.

The batch schedule maps a step to its global batch (in sequences); the data position of step ``s`` is the number
of samples consumed before it, so a batch-size change never replays or skips data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LRSchedule:
    peak: float
    min_lr: float
    warmup_steps: int
    total_steps: int  # length of the whole schedule (including the offset)
    kind: str = "cosine"
    offset: int = 0
    decay_fraction: float = 0.2
    decay_shape: str = "1-sqrt"

    @classmethod
    def from_args(cls, args) -> "LRSchedule":
        if not isinstance(args.lr_step_offset, int):  # 'continue' is resolved at start-up (args.require_resolved)
            raise ValueError(f"lr_step_offset {args.lr_step_offset!r} is not resolved to a number yet")
        total = args.lr_schedule_steps or args.lr_step_offset + args.max_steps
        return cls(args.learning_rate, args.min_lr, args.warmup_steps, total, args.lr_schedule, args.lr_step_offset,
                   args.decay_fraction, args.decay_shape)

    def __call__(self, step: int) -> float:
        """Learning rate of this run's optimizer step ``step`` (0-based)."""
        it = step + self.offset
        if it < self.warmup_steps:
            return self.peak * it / self.warmup_steps
        if self.kind == "constant":
            return self.peak
        if self.kind == "cosine":
            if it >= self.total_steps:
                return self.min_lr
            ratio = (it - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
            return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (self.peak - self.min_lr)
        decay_steps = max(1, round(self.total_steps * self.decay_fraction))
        decay_start = self.total_steps - decay_steps
        if it < decay_start:
            return self.peak
        p = min(1.0, (it - decay_start + 1) / decay_steps)
        shape = {"linear": 1 - p, "1-sqrt": 1 - math.sqrt(p), "cosine": 0.5 * (1 + math.cos(math.pi * p))}
        return self.min_lr + shape[self.decay_shape] * (self.peak - self.min_lr)

    def multiplier(self, step: int) -> float:
        """For ``torch.optim.lr_scheduler.LambdaLR`` (the optimizer's lr is the peak)."""
        return self(step) / self.peak


@dataclass(frozen=True)
class BatchSchedule:
    """Global batch size (sequences per optimizer step) by step: ``initial`` until the first change, and so on."""

    initial: int
    changes: tuple[tuple[int, int], ...] = ()  # (step, global batch from that step on), sorted

    @classmethod
    def from_args(cls, args) -> "BatchSchedule":
        changes = sorted((c["step"], c["global_batch_size"]) for c in args.batch_schedule)
        return cls(args.global_batch_size, tuple(changes))

    def batch_at(self, step: int) -> int:
        batch = self.initial
        for start, size in self.changes:
            if step >= start:
                batch = size
        return batch

    def samples_before(self, step: int) -> int:
        """Samples consumed by steps 0..step-1: the data position at which ``step`` starts."""
        total, prev_step, batch = 0, 0, self.initial
        for start, size in self.changes:
            if start >= step:
                break
            total += (start - prev_step) * batch
            prev_step, batch = start, size
        return total + (step - prev_step) * batch
