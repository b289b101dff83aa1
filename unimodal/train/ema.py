"""EMA of the weights, kept in float32 on every rank's own shard, so it works under ZeRO-3.

Under ZeRO stages 0-2 every rank holds whole parameters and the EMA is a whole copy. Under ZeRO-3
a rank holds only its partition of each parameter (`param.ds_tensor`); the EMA then tracks that
partition, costs 1/world of the memory, and is gathered only to export (`full_state_dict`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _local(p: torch.Tensor) -> torch.Tensor:
    """The part of parameter p this rank holds: its ZeRO-3 partition, or the whole tensor."""
    return p.ds_tensor if hasattr(p, "ds_tensor") else p.data


def ema_decay(decay: float, step: int, warmup: bool) -> float:
    """The decay applied at update `step` (0-based): with warmup min(decay, (1 + step) / (10 + step)),
    as diffusers' EMAModel, so the random initialisation is forgotten early. Without it a short run
    exports mostly its first weights: 0.995 ** 400 = 13.5% of a 400-step run's EMA is the init."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


class EMA:
    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        self.decay, self.warmup = decay, warmup
        self.names = [n for n, _ in model.named_parameters()]
        self.shadow = [_local(p).detach().float().clone() for _, p in model.named_parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold in the weights after optimizer step `step` (0-based: the run's step count before it)."""
        w = 1.0 - ema_decay(self.decay, step, self.warmup)
        for s, (_, p) in zip(self.shadow, model.named_parameters(), strict=True):
            s.lerp_(_local(p).float(), w)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError("EMA state does not match the model's parameters")
        for s, v in zip(self.shadow, state["shadow"], strict=True):
            s.copy_(v)

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Whole float32 EMA tensors by parameter name (collective under ZeRO-3: call on all ranks)."""
        out = {}
        for name, s, (_, p) in zip(self.names, self.shadow, model.named_parameters(), strict=True):
            if hasattr(p, "ds_tensor"):
                parts = [torch.empty_like(s) for _ in range(dist.get_world_size())]
                dist.all_gather(parts, s)
                out[name] = torch.cat(parts)[: p.ds_numel].reshape(p.ds_shape)
            else:
                out[name] = s.clone()
        return out
