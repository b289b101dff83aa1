"""Visual tokenisation: patches, blocks, and the exact inverse.

An image or video tensor (T, C, H, W) becomes a grid of (T, H/p, W/p) patches of C*p*p features
(feature order (c, p, q), channel-major). The patch grid is cut into blocks, the autoregressive
units of ACDiT:

- ``tiles``: square tiles of `size` x `size` patches per frame, tiles in raster order and raster
  order inside a tile (the official ``square_block=True`` order); frame by frame for video.
- ``rows``: runs of `size` whole rows of a frame (raster order cut into chunks).
- ``frames``: runs of `size` whole frames (the official ``square_block=False`` order for video).

A tile of 1 patch is token-wise autoregression; a tile (or run of rows) covering the whole grid is
one block per image, i.e. full-sequence diffusion (DiT).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch

BlockKind = Literal["tiles", "rows", "frames"]


@dataclass(frozen=True)
class BlockSpec:
    """How a patch grid is cut into blocks: `kind` and `size` (tile side, rows or frames per block)."""

    kind: BlockKind = "tiles"
    size: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("tiles", "rows", "frames"):
            raise ValueError(f"BlockSpec.kind must be 'tiles', 'rows' or 'frames', got {self.kind!r}")
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"BlockSpec.size must be a positive integer, got {self.size!r}")

    def block_len(self, grid: tuple[int, int, int]) -> int:
        """Tokens per block on a (frames, rows, cols) patch grid; raises if the grid does not divide."""
        t, h, w = grid
        s = self.size
        if self.kind == "tiles":
            if h % s or w % s:
                raise ValueError(f"tiles of {s}x{s} patches do not divide the {h}x{w} patch grid")
            return s * s
        if self.kind == "rows":
            if h % s:
                raise ValueError(f"runs of {s} rows do not divide the {h} rows of the patch grid")
            return s * w
        if t % s:
            raise ValueError(f"runs of {s} frames do not divide the {t} frames of the clip")
        return s * h * w

    def num_blocks(self, grid: tuple[int, int, int]) -> int:
        t, h, w = grid
        return t * h * w // self.block_len(grid)


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(T, C, H, W) -> (T, H/p, W/p, C*p*p)."""
    t, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"patch size {patch} does not divide the image size {h}x{w}")
    x = x.reshape(t, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(t, h // patch, w // patch, c * patch * patch)


def unpatchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(T, H/p, W/p, C*p*p) -> (T, C, H, W); exact inverse of `patchify`."""
    t, hp, wp, d = x.shape
    c = d // (patch * patch)
    x = x.reshape(t, hp, wp, c, patch, patch)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(t, c, hp * patch, wp * patch)


def block_order(grid: tuple[int, int, int], spec: BlockSpec) -> torch.Tensor:
    """Raster indices of the patch grid listed in block order (block after block). Cached per grid
    and spec (every image of a dataset shares one): treat the result as read-only."""
    return _block_order(tuple(int(g) for g in grid), spec)


@lru_cache(maxsize=1024)  # bounded: datasets of many image sizes make many grids
def _block_order(grid: tuple[int, int, int], spec: BlockSpec) -> torch.Tensor:
    t, h, w = grid
    spec.block_len(grid)  # validates divisibility
    idx = torch.arange(t * h * w).reshape(t, h, w)
    if spec.kind == "tiles":
        s = spec.size
        idx = idx.reshape(t, h // s, s, w // s, s).permute(0, 1, 3, 2, 4)
    return idx.reshape(-1)


def grid_positions(grid: tuple[int, int, int]) -> torch.Tensor:
    """(t, h, w) coordinates of every patch in raster order: (T*H*W, 3). Cached per grid: treat
    the result as read-only."""
    return _grid_positions(tuple(int(g) for g in grid))


@lru_cache(maxsize=1024)  # bounded: datasets of many image sizes make many grids
def _grid_positions(grid: tuple[int, int, int]) -> torch.Tensor:
    t, h, w = grid
    return torch.stack(
        torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"), dim=-1
    ).reshape(-1, 3)


def block_positions(grid: tuple[int, int, int], spec: BlockSpec) -> torch.Tensor:
    """(t, h, w) coordinates of every patch in block order: (N, B, 3). Cached per grid and spec:
    treat the result as read-only."""
    return _block_positions(tuple(int(g) for g in grid), spec)


@lru_cache(maxsize=1024)
def _block_positions(grid: tuple[int, int, int], spec: BlockSpec) -> torch.Tensor:
    return grid_positions(grid)[block_order(grid, spec)].reshape(spec.num_blocks(grid), spec.block_len(grid), 3)


@lru_cache(maxsize=1024)
def _gather_index(shape: tuple[int, int, int, int], patch: int, spec: BlockSpec) -> torch.Tensor:
    """Flat indices into a contiguous (T, C, H, W) tensor of that shape, listing the features of its
    patches in block order: `to_blocks` is then one gather, not a chain of copies. Read-only."""
    p = patchify(torch.arange(shape[0] * shape[1] * shape[2] * shape[3]).reshape(shape), patch)
    return p.reshape(-1, p.shape[-1])[block_order(tuple(p.shape[:3]), spec)].reshape(-1)


def to_blocks(x: torch.Tensor, patch: int, spec: BlockSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, C, H, W) -> tokens (N, B, C*p*p) and their (t, h, w) positions (N, B, 3), in block order."""
    t, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"patch size {patch} does not divide the image size {h}x{w}")
    grid = (t, h // patch, w // patch)
    index = _gather_index((t, c, h, w), patch, spec).to(x.device)
    tokens = (
        x.reshape(-1).index_select(0, index).reshape(spec.num_blocks(grid), spec.block_len(grid), c * patch * patch)
    )
    return tokens, block_positions(grid, spec).clone()  # the caller's own: it may edit them


def from_blocks(tokens: torch.Tensor, grid: tuple[int, int, int], patch: int, spec: BlockSpec) -> torch.Tensor:
    """Exact inverse of `to_blocks`: tokens (N, B, D) on a patch grid -> (T, C, H, W).

    Works on any leading batch dimensions: (..., N, B, D) -> (..., T, C, H, W).
    """
    order = block_order(grid, spec)
    lead = tokens.shape[:-3]
    flat = tokens.reshape(*lead, -1, tokens.shape[-1])
    raster = torch.empty_like(flat)
    raster[..., order, :] = flat
    t, h, w = grid
    raster = raster.reshape(-1, t, h, w, flat.shape[-1])
    out = torch.stack([unpatchify(r, patch) for r in raster])
    return out.reshape(*lead, *out.shape[1:])
