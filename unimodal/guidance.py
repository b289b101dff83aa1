"""Classifier-free guidance: the guided prediction and per-step guidance-scale schedules.

The guided prediction is `uncond + scale * (cond - uncond)` (ACDiT: a constant scale, 1.5 on ImageNet). A
schedule gives the scale for each model call of a block, so that guidance can vary inside the block's
denoising loop:

- `constant`: the same scale at every call (the paper's setting).
- `linear`: a ramp from `start_scale` at the block's first call to `scale` at its last (MAR-style; MAR ramps
  from 1 to the target scale).
- `interval`: `scale` only at calls whose time t lies in [t_lo, t_hi], no guidance (scale 1) elsewhere
  ("guidance in a limited interval", Kynkäänniemi et al. 2024; guidance at the highest noise levels mostly
  costs diversity, at the lowest it does little).

Times are unit times in [0, 1] with 1 = pure noise (`Sampler.unit_timesteps`: DDPM steps / 999, flow t as is),
so one config serves both parameterisations. A scale of exactly 1 gives the conditional prediction bit for bit,
and `needs_uncond` lets the caller skip the unconditional branch there.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

SCHEDULES = ("constant", "linear", "interval")


def apply(cond: torch.Tensor, uncond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """The guided prediction uncond + scale * (cond - uncond); exactly `cond` where scale == 1.

    `scale` may be a tensor broadcastable to the predictions (a scale per sample)."""
    if isinstance(scale, torch.Tensor):
        scale = scale.to(cond.dtype)
        return torch.where(scale == 1, cond, uncond + scale * (cond - uncond))
    if scale == 1:
        return cond
    return uncond + scale * (cond - uncond)


def _check_call(i: int, num_steps: int) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < num_steps:
        raise ValueError(f"step index i must be an integer in 0..{num_steps - 1}, got {i!r}")


class GuidanceSchedule(ABC):
    """The guidance scale for call i of a block's num_steps model calls, at unit time t (1 = pure noise)."""

    @abstractmethod
    def scale_at(self, i: int, num_steps: int, t: float | torch.Tensor | None = None) -> float: ...

    def needs_uncond(self, i: int, num_steps: int, t: float | torch.Tensor | None = None) -> bool:
        """Whether call i needs the unconditional prediction at all (scale != 1)."""
        return self.scale_at(i, num_steps, t) != 1.0


class ConstantGuidance(GuidanceSchedule):
    """The same scale at every call."""

    def __init__(self, scale: float) -> None:
        self.scale = float(scale)

    def scale_at(self, i: int, num_steps: int, t: float | torch.Tensor | None = None) -> float:
        _check_call(i, num_steps)
        return self.scale


class LinearGuidance(GuidanceSchedule):
    """start_scale at call 0, end_scale at call num_steps - 1, linear in between; a 1-call block gets end_scale
    (its only call is also its last)."""

    def __init__(self, start_scale: float, end_scale: float) -> None:
        self.start_scale, self.end_scale = float(start_scale), float(end_scale)

    def scale_at(self, i: int, num_steps: int, t: float | torch.Tensor | None = None) -> float:
        _check_call(i, num_steps)
        if num_steps == 1:
            return self.end_scale
        return self.start_scale + (self.end_scale - self.start_scale) * i / (num_steps - 1)


class IntervalGuidance(GuidanceSchedule):
    """`scale` where t_lo <= t <= t_hi (unit time, bounds included), 1 (no guidance) elsewhere."""

    def __init__(self, scale: float, t_lo: float, t_hi: float) -> None:
        self.scale, self.t_lo, self.t_hi = float(scale), float(t_lo), float(t_hi)

    def scale_at(self, i: int, num_steps: int, t: float | torch.Tensor | None = None) -> float:
        _check_call(i, num_steps)
        if t is None:
            raise ValueError("interval guidance needs the call's unit time t (Sampler.unit_timesteps[i])")
        t = float(t)
        return self.scale if self.t_lo <= t <= self.t_hi else 1.0


@dataclass(frozen=True)
class GuidanceConfig:
    """Validated guidance settings.

    schedule: 'constant' | 'linear' | 'interval'. scale: the guidance scale (linear: the scale reached at the
    last call). start_scale: linear only, the scale at the first call. t_lo, t_hi: interval only, unit-time
    bounds. Settings that the schedule does not use must stay at their defaults (a likely mistake otherwise).
    """

    schedule: str = "constant"
    scale: float = 1.0
    start_scale: float = 1.0
    t_lo: float = 0.0
    t_hi: float = 1.0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"guidance schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name in ("scale", "start_scale", "t_lo", "t_hi"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ValueError(f"guidance {name} must be a finite number, got {v!r}")
            object.__setattr__(self, name, float(v))
        for name in ("scale", "start_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"guidance {name} must be >= 0 (0 = unconditional, 1 = conditional only)")
        if not 0.0 <= self.t_lo <= self.t_hi <= 1.0:
            raise ValueError(f"guidance interval needs 0 <= t_lo <= t_hi <= 1, got [{self.t_lo}, {self.t_hi}]")
        used = {"constant": {"scale"}, "linear": {"scale", "start_scale"}, "interval": {"scale", "t_lo", "t_hi"}}
        stray = [f.name for f in fields(self) if f.name not in used[self.schedule] | {"schedule"}]
        stray = [n for n in stray if getattr(self, n) != getattr(GuidanceConfig, n)]
        if stray:
            raise ValueError(f"guidance schedule {self.schedule!r} does not use {stray}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GuidanceConfig:
        """From a mapping (a YAML/JSON section); unknown keys are an error that names them."""
        if not isinstance(d, Mapping):
            raise ValueError(f"guidance config must be a mapping, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown guidance key(s) {unknown}; expected some of {known}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, round-trips through from_dict."""
        return asdict(self)

    def build(self) -> GuidanceSchedule:
        """The schedule object."""
        if self.schedule == "constant":
            return ConstantGuidance(self.scale)
        if self.schedule == "linear":
            return LinearGuidance(self.start_scale, self.scale)
        return IntervalGuidance(self.scale, self.t_lo, self.t_hi)

    def scale_at(self, i: int, num_steps: int, t: float | torch.Tensor | None = None) -> float:
        """The scale for call i of num_steps at unit time t (see the schedule classes)."""
        return self.build().scale_at(i, num_steps, t)

    def needs_uncond(self, i: int, num_steps: int, t: float | torch.Tensor | None = None) -> bool:
        """Whether call i needs the unconditional branch (scale != 1)."""
        return self.build().needs_uncond(i, num_steps, t)
