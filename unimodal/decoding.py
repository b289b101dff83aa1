"""Choosing the next text token: greedy, temperature, top-k and top-p (nucleus) sampling.

Each row draws from its own generator, so a row's tokens do not depend on which other rows share
its batch (batched generation equals one-at-a-time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TextSampling:
    """temperature 0 is greedy (argmax); top_k 0 and top_p 1 switch those filters off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set whose probability
    reaches top_p (the most likely token always stays). logits: (n, vocab)."""
    out = logits.float().clone()
    if top_k and top_k < out.shape[-1]:
        kth = out.topk(top_k, dim=-1).values[..., -1:]
        out[out < kth] = float("-inf")
    if top_p < 1.0:
        sorted_logits, order = out.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of the tokens ranked above each one
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out[drop] = float("-inf")
    return out


def next_tokens(
    logits: torch.Tensor, sampling: TextSampling, generators: Sequence[torch.Generator | None]
) -> torch.Tensor:
    """One token per row of logits (n, vocab), row r drawing from generators[r]."""
    if sampling.temperature == 0:
        return logits.argmax(-1)
    filtered = filter_logits(logits / sampling.temperature, sampling.top_k, sampling.top_p)
    probs = filtered.softmax(-1)
    return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators, strict=True)])
