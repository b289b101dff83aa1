"""RoPE-ND: rotary position embedding over three axes (t, h, w).

The head dimension is split into per-axis sections. In ``axial`` mode (the default, Eq. 4 of the
ACDiT paper) each section is rotated within itself with the standard frequencies
theta^(-2i/d_a): a proper rotation, so it preserves norms and attention scores depend only on
relative positions. Text tokens carry the same index on every axis (M-RoPE style).

``official`` mode reproduces the official ACDiT code bit for bit so that its checkpoints load:
frequencies base^(-u/head_dim) for u = linspace(0, head_dim, d_a/2), per-axis tables concatenated,
and rotate_half over the whole head (dimension j pairs with j + head_dim/2, across axes). It is
neither norm-preserving nor relative; see docs/model.md.

Both modes are one formula: out = x * cos + x[..., perm] * sin_signed, with the pairing `perm`
and the signs folded into the tables.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

RopeMode = Literal["axial", "official"]


def default_sections(head_dim: int) -> tuple[int, int, int]:
    """Split a head into (t, h, w) sections: even sizes, h == w, t takes the rest (64 -> 16, 24, 24)."""
    hw = 2 * ((3 * head_dim) // 16)
    return head_dim - 2 * hw, hw, hw


def official_base(axis_len: int) -> float:
    """The official code's per-axis base: ((int(8 L / pi) // 100) + 1) * 100."""
    import math

    return float(((int(8 * axis_len / math.pi) // 100) + 1) * 100)


class RopeND(nn.Module):
    """Rotary embedding over (t, h, w) positions: `rotate(x, tables(pos))` for x (..., L, heads, head_dim)."""

    def __init__(
        self,
        head_dim: int,
        sections: tuple[int, int, int],
        theta: float | tuple[float, float, float] = 10000.0,
        mode: RopeMode = "axial",
    ) -> None:
        super().__init__()
        if sum(sections) != head_dim or any(s < 0 or s % 2 for s in sections):
            raise ValueError(f"rope sections {sections} must be even, non-negative and sum to head_dim {head_dim}")
        if mode not in ("axial", "official"):
            raise ValueError(f"rope mode must be 'axial' or 'official', got {mode!r}")
        thetas = (theta,) * 3 if isinstance(theta, (int, float)) else tuple(theta)
        freqs, perm, sign, axis = [], [], [], []
        offset = 0
        for a, (d, th) in enumerate(zip(sections, thetas, strict=True)):
            if d == 0:
                continue
            if mode == "axial":
                f = th ** (-torch.arange(0, d, 2, dtype=torch.float64, device="cpu") / d)
                half = d // 2
                perm += [offset + half + i for i in range(half)] + [offset + i for i in range(half)]
                sign += [-1.0] * half + [1.0] * half
            else:
                f = 1.0 / th ** (torch.linspace(0, head_dim, d // 2, dtype=torch.float64, device="cpu") / head_dim)
            freqs.append(torch.cat([f, f]))
            axis += [a] * d
            offset += d
        if mode == "official":
            half = head_dim // 2
            perm = [half + i for i in range(half)] + [i for i in range(half)]
            sign = [-1.0] * half + [1.0] * half
        self.mode = mode
        # Tables are derived, not learned: built on the CPU even when the model is built on the meta
        # device (loading), and moved with the model.
        cpu = torch.device("cpu")
        self.register_buffer("freqs", torch.cat(freqs).to(cpu, torch.float32), persistent=False)
        self.register_buffer("axis", torch.tensor(axis, device=cpu), persistent=False)
        self.register_buffer("sign", torch.tensor(sign, device=cpu), persistent=False)
        # the pairing as contiguous runs of source dims: slicing and concatenating is much cheaper
        # (forward and backward) than gathering with an index tensor
        self.runs: list[tuple[int, int]] = []
        for j, src in enumerate(perm):
            if self.runs and j > 0 and perm[j - 1] + 1 == src:
                self.runs[-1] = (self.runs[-1][0], self.runs[-1][1] + 1)
            else:
                self.runs.append((src, 1))

    def tables(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin tables (..., L, 1, head_dim) in float32 for positions (..., L, 3)."""
        angles = pos[..., self.axis].float() * self.freqs
        return angles.cos().unsqueeze(-2), (angles.sin() * self.sign).unsqueeze(-2)

    def rotate(self, x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Rotate x (..., L, heads, head_dim) in x's dtype with tables computed in float32 (as
        LLaMA-style models do under bf16); float32 inputs are rotated exactly as before."""
        cos, sin = tables
        paired = torch.cat([x[..., a : a + n] for a, n in self.runs], dim=-1)
        return x * cos.to(x.dtype) + paired * sin.to(x.dtype)
