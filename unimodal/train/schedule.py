"""Learning-rate schedules as multipliers of the peak rate, for `torch.optim.lr_scheduler.LambdaLR`.

- `wsd` (warmup-stable-decay, the ACDiT paper's): linear warmup, constant, then over the last
  `decay_fraction` of the run a decay to `min_lr_ratio` (linear in log space, as the official
  code's lr * 0.5^(6r) when min_lr_ratio = 1/64).
- `cosine`: linear warmup, then cosine from 1 to `min_lr_ratio`.
- `constant`: linear warmup, then 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .config import ScheduleConfig


def lr_factor(cfg: ScheduleConfig, max_steps: int) -> Callable[[int], float]:
    """step -> multiplier of the peak learning rate."""
    warm = cfg.warmup_steps
    floor = cfg.min_lr_ratio

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.kind == "constant":
            return 1.0
        if cfg.kind == "cosine":
            r = (step - warm) / max(1, max_steps - warm)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, r)))
        decay_start = max_steps - round(cfg.decay_fraction * max_steps)
        if step < decay_start:
            return 1.0
        r = (step - decay_start + 1) / max(1, max_steps - decay_start)
        if floor > 0:
            return math.exp(math.log(floor) * min(1.0, r))
        return max(0.0, 1.0 - r)

    return f
