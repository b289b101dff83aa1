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

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def evict(self, row: int, lo_unit: int, hi_unit: int) -> int:
        """Remove row `row`'s cached tokens with lo_unit <= unit < hi_unit and close the gap (a
        sliding window over earlier blocks); returns how many were removed."""
        n = int(self.length[row])
        unit = self.unit[row, :n]
        keep = ((unit < lo_unit) | (unit >= hi_unit)).nonzero().squeeze(1)
        m = keep.numel()
        if m == n:
            return 0
        self.k[:, row, :, :m] = self.k[:, row, :, keep]
        self.v[:, row, :, :m] = self.v[:, row, :, keep]
        self.doc[row, :m], self.unit[row, :m] = self.doc[row, keep], self.unit[row, keep]
        self.doc[row, m:n] = EMPTY
        self.length[row] = m
        return n - m

    def begin(self, layout, commit: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> CacheStep:
        """Open one forward's access: query row r reads cache row `rows[r]` (default r) and appends
        its tokens flagged in `commit` (R, n; clean tokens only) there."""
        return CacheStep(self, layout, commit, rows)


class CacheStep:
    """One forward pass's view of a KVCache: the rows it reads, the keys of each layer, the commit.

    Several query rows may read the same cache row (the two guidance branches of class-conditional
    sampling share one clean context), but only one of them may commit to it.
    """

    def __init__(self, cache: KVCache, layout, commit: torch.Tensor | None, rows: torch.Tensor | None) -> None:
        r = layout.doc.shape[0]
        device = cache.length.device
        self.cache = cache
        self.rows = torch.arange(r, device=device) if rows is None else rows.to(device)
        if self.rows.shape != (r,):
            raise ValueError(f"cache rows must be one per query row ({r}), got shape {tuple(self.rows.shape)}")
        # a contiguous run of rows reads the buffers as views (no copy of the cached keys per layer)
        first = int(self.rows[0]) if r else 0
        contiguous = r > 0 and torch.equal(self.rows, torch.arange(first, first + r, device=device))
        self._index = slice(first, first + r) if contiguous else self.rows
        lengths = cache.length[self.rows]
        self.span = int(lengths.max()) if r else 0
        commit = torch.zeros_like(layout.noisy) if commit is None else commit
        if (commit & layout.noisy).any():
            raise ValueError("only clean tokens can be committed to the KV cache")
        count = commit.sum(1)
        committing = self.rows[count > 0]
        if committing.unique().numel() != committing.numel():
            raise ValueError("two query rows commit to the same cache row")
        if r and int((lengths + count).max()) > cache.max_len:
            raise RuntimeError(
                f"KV cache full: {int((lengths + count).max())} tokens needed, {cache.max_len} allocated"
            )
        b_idx, src = commit.nonzero(as_tuple=True)
        dst = lengths[b_idx] + (commit.cumsum(1) - 1)[b_idx, src]
        self._write = (self.rows[b_idx], b_idx, src, dst)
        self._meta = (layout.doc[b_idx, src], layout.unit[b_idx, src])

    def fields(self) -> Fields:
        """The cached tokens' fields for the rule, (R, span): empty slots never match a query's doc."""
        s, c = self.span, self.cache
        idx = torch.arange(s, device=c.doc.device).expand(self.rows.numel(), s)
        doc = c.doc[self._index, :s]
        return Fields(doc, c.unit[self._index, :s], torch.zeros_like(doc, dtype=torch.bool), idx)

    def keys(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached keys and values (R, heads, span, head_dim) of this layer for the query rows."""
        s = self.span
        return self.cache.k[layer, self._index, :, :s], self.cache.v[layer, self._index, :, :s]

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store this layer's committed tokens of k, v (R, heads, n, head_dim)."""
        dst_row, b_idx, src, dst = self._write
        if b_idx.numel():
            self.cache.k[layer, dst_row, :, dst] = k[b_idx, :, src].to(self.cache.k.dtype)
            self.cache.v[layer, dst_row, :, dst] = v[b_idx, :, src].to(self.cache.v.dtype)

    def end(self) -> None:
        """Make the committed tokens visible: their doc and unit go into the slots, lengths grow."""
        dst_row, _, _, dst = self._write
        c = self.cache
        c.doc[dst_row, dst], c.unit[dst_row, dst] = self._meta
        c.length += torch.bincount(dst_row, minlength=c.length.numel())
