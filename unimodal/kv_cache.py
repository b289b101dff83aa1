"""A preallocated per-layer KV cache of clean tokens, with per-sample lengths.

Only clean tokens are ever cached: they never see a timestep, so their keys and values are exact
context for every later step. Each cache slot also records the doc and unit of its token, so the
cached path applies the very same attention rule as training (`attention.rule.allowed`).
"""

from __future__ import annotations

import torch

from .attention import Fields

EMPTY = -2  # doc id of an unused slot: equal to no query's doc, padding (-1) included


class KVCache:
    """K/V buffers (layers, batch, heads, max_len, head_dim); `length[b]` slots of row b are filled."""

    def __init__(
        self,
        layers: int,
        batch: int,
        heads: int,
        head_dim: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.k = torch.zeros(layers, batch, heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.doc = torch.full((batch, max_len), EMPTY, dtype=torch.long, device=device)
        self.unit = torch.zeros((batch, max_len), dtype=torch.long, device=device)
        self.length = torch.zeros(batch, dtype=torch.long, device=device)
        self._pending: tuple[torch.Tensor, ...] | None = None

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def span(self) -> int:
        """Slots in use by the longest row; attention reads only this prefix of the buffers."""
        return int(self.length.max()) if self.length.numel() else 0

    def fields(self) -> Fields:
        s = self.span
        b = self.doc.shape[0]
        idx = torch.arange(s, device=self.doc.device).expand(b, s)
        return Fields(self.doc[:, :s], self.unit[:, :s], torch.zeros_like(self.unit[:, :s], dtype=torch.bool), idx)

    def keys(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.span
        return self.k[layer, :, :, :s], self.v[layer, :, :, :s]

    def begin_commit(self, layout, commit: torch.Tensor) -> None:
        """Plan appending the tokens `commit` (R, n) of a step (clean only) at each row's end."""
        if (commit & layout.noisy).any():
            raise ValueError("only clean tokens can be committed to the KV cache")
        count = commit.sum(1)
        if int((self.length + count).max()) > self.max_len:
            raise RuntimeError(
                f"KV cache full: {int((self.length + count).max())} tokens needed, {self.max_len} allocated"
            )
        b_idx, src = commit.nonzero(as_tuple=True)
        dst = self.length[b_idx] + (commit.cumsum(1) - 1)[b_idx, src]
        self._pending = (b_idx, src, dst, layout.doc[b_idx, src], layout.unit[b_idx, src])

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the planned tokens of k, v (R, heads, n, head_dim) for `layer`."""
        if self._pending is None:
            return
        b_idx, src, dst = self._pending[:3]
        self.k[layer, b_idx, :, dst] = k[b_idx, :, src].to(self.k.dtype)
        self.v[layer, b_idx, :, dst] = v[b_idx, :, src].to(self.v.dtype)

    def end_commit(self) -> None:
        """Make the written tokens visible: their doc and unit go into the slots, lengths grow."""
        if self._pending is not None:
            b_idx, _, dst, doc, unit = self._pending
            self.doc[b_idx, dst] = doc
            self.unit[b_idx, dst] = unit
            self.length += torch.bincount(b_idx, minlength=self.length.numel())
            self._pending = None
