"""Fixed sin-cos absolute positions of visual tokens inside their image or clip (DiT's 2-D table,
extended to (t, h, w)), added to the patch embeddings when `ModelConfig.abs_pos` is "sincos".

RoPE gives attention only relative offsets, and an image's tokens sit at M-RoPE indices offset by
the document's running index, so how far a patch is from the caption depends on the caption's
length. The table tells every visual token where it is in its image directly: (t, h, w) =
`layout.pos - layout.origin`, the same for a block's clean and noisy copies.
"""

from __future__ import annotations

import math

import torch


def axis_sizes(dim: int) -> tuple[int, int, int]:
    """Channels per axis (t, h, w): h and w get the same even share, t the rest (256 -> 88, 84, 84)."""
    hw = (dim // 3) // 2 * 2
    return dim - 2 * hw, hw, hw


def sincos_positions(local: torch.Tensor, dim: int) -> torch.Tensor:
    """(..., 3) integer positions -> (..., dim) float32: per axis, sin then cos of pos x 10000^(-i/half)."""
    parts = []
    for axis, size in enumerate(axis_sizes(dim)):
        half = size // 2
        freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=local.device) / half)
        angle = local[..., axis].float().unsqueeze(-1) * freq
        parts += [angle.sin(), angle.cos()]
        if size % 2:
            parts.append(torch.zeros_like(angle[..., :1]))
    return torch.cat(parts, dim=-1)
