"""The generation engine: text decoding and blockwise image diffusion over one KV cache.

Each document being generated is a *row*. The engine keeps, per cache row, the next unit id and
the next RoPE index, and either a preallocated `KVCache` of its clean tokens (`use_cache=True`) or
the clean tokens themselves, re-run through the full forward at every step (`use_cache=False`,
for checking and measuring; same results). Every step is one `UnifiedModel.forward` over a small
layout, so inference applies exactly the training attention rule.

An image is generated block by block (ARCHITECTURE.md §5): for block k, the sampler runs its steps
over the noisy block against the cached clean context; the finished clean block k-1 is committed
in the same forward as block k's first step, and after the last block the clean block is committed
alone (text that follows must see it).

Guidance: in class mode the two branches differ only in the AdaLN label of the noisy tokens, so
both read one shared cache row; in text mode the unconditional branch has its own cache rows
(rows R..2R-1) whose prompt is the null token, kept in step with every commit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .guidance import GuidanceSchedule, apply
from .layout import PAD, TEXT, VISUAL, Layout
from .model import UnifiedModel
from .patches import block_order, grid_positions
from .samplers import Sampler


@dataclass
class TextSeg:
    """Text tokens appended (and committed) to a row."""

    ids: list[int]


@dataclass
class BlockSeg:
    """Block k of the row's current image: clean (committed) or noisy (x_t at time t, label)."""

    k: int
    x: torch.Tensor
    noisy: bool


class Engine:
    """Rows of documents being generated; `rows` cache rows (2 x documents in text-guidance mode)."""

    def __init__(self, model: UnifiedModel, rows: int, max_len: int, use_cache: bool = True) -> None:
        self.model = model
        self.cfg = model.cfg
        p = model.x_embedder.weight
        self.device, self.dtype = p.device, p.dtype
        self.rows = rows
        self.unit = torch.zeros(rows, dtype=torch.long)
        self.index = torch.zeros(rows, dtype=torch.long)
        self.image_unit = torch.zeros(rows, dtype=torch.long)
        self.image_index = torch.zeros(rows, dtype=torch.long)
        self.use_cache = use_cache
        self.max_len = max_len
        self.cache = model.new_cache(rows, max_len) if use_cache else None
        self.history: list[list[dict]] = [[] for _ in range(rows)]  # uncached: committed tokens per row
        self.grid: tuple[int, int, int] | None = None

    # ------------------------------------------------------------------------------- one forward

    def run(
        self,
        cache_rows: list[int],
        segs: list[list[TextSeg | BlockSeg]],
        commit: list[bool],
        t: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One forward: query row q appends `segs[q]` to cache row `cache_rows[q]` (committing its
        clean tokens if `commit[q]`). Returns the noisy predictions (Rq, B, D) of the rows' noisy
        blocks (or None) and the logits (Rq, vocab) at each row's last text token (or None)."""
        toks = [self._tokens(c, s) for c, s in zip(cache_rows, segs, strict=True)]
        for c, s, keep in zip(cache_rows, segs, commit, strict=True):
            if keep:
                self._advance(c, s)
        if self.use_cache:
            starts = [0] * len(toks)
            lay, tokens, patches, commit_mask = self._pack(toks, commit)
            rows_t = torch.tensor(cache_rows, device=self.device)
            out = self.model(
                tokens, patches, lay, t=t, labels=labels, cache=self.cache, commit=commit_mask, cache_rows=rows_t
            )
        else:  # the whole prefix again, through the training forward
            starts = [len(self.history[c]) for c in cache_rows]
            lay, tokens, patches, _ = self._pack(
                [self.history[c] + tk for c, tk in zip(cache_rows, toks, strict=True)], None
            )
            out = self.model(tokens, patches, lay, t=t, labels=labels, backend="dense")
            for c, tk, keep in zip(cache_rows, toks, commit, strict=True):
                if keep:
                    self.history[c] = self.history[c] + [d for d in tk if not d["noisy"]]
        return self._outputs(out, lay, starts, [len(tk) for tk in toks])

    def _tokens(self, c: int, segs: list[TextSeg | BlockSeg]) -> list[dict]:
        """Per-token fields of segments appended to cache row c (state not yet advanced)."""
        out = []
        unit, index = int(self.unit[c]), int(self.index[c])
        for s in segs:
            if isinstance(s, TextSeg):
                for tok in s.ids:
                    out.append(dict(token=tok, patch=None, unit=unit, pos=(index,) * 3, noisy=False, mod=TEXT))
                    unit += 1
                    index += 1
            else:
                pos = self.block_pos[s.k] + int(self.image_index[c])
                u = int(self.image_unit[c]) + s.k
                for j in range(pos.shape[0]):
                    out.append(
                        dict(token=0, patch=s.x[j], unit=u, pos=tuple(pos[j].tolist()), noisy=s.noisy, mod=VISUAL)
                    )
        return out

    def _advance(self, c: int, segs: list[TextSeg | BlockSeg]) -> None:
        for s in segs:
            if isinstance(s, TextSeg):
                self.unit[c] += len(s.ids)
                self.index[c] += len(s.ids)

    def _pack(self, rows: list[list[dict]], commit: list[bool] | None):
        """Right-padded step tensors: the layout, tokens, patches and the commit mask."""
        r, n, d = len(rows), max(len(x) for x in rows), self.cfg.patch_dim
        doc = torch.full((r, n), -1, dtype=torch.long)
        unit = torch.zeros((r, n), dtype=torch.long)
        noisy = torch.zeros((r, n), dtype=torch.bool)
        mod = torch.full((r, n), PAD, dtype=torch.long)
        pos = torch.zeros((r, n, 3), dtype=torch.long)
        block = torch.full((r, n), -1, dtype=torch.long)
        tokens = torch.zeros((r, n), dtype=torch.long)
        patches = torch.zeros((r, n, d))
        for q, toks in enumerate(rows):
            for j, tk in enumerate(toks):
                doc[q, j], unit[q, j], noisy[q, j], mod[q, j] = 0, tk["unit"], tk["noisy"], tk["mod"]
                pos[q, j] = torch.tensor(tk["pos"])
                tokens[q, j] = tk["token"]
                if tk["patch"] is not None:
                    patches[q, j] = tk["patch"]
                    block[q, j] = q  # t and labels are per query row
        lay = Layout(doc, unit, noisy, mod, pos, block).to(self.device)
        commit_mask = None if commit is None else ((doc >= 0) & ~noisy & torch.tensor(commit).unsqueeze(1))
        return lay, tokens.to(self.device), patches.to(self.device, self.dtype), commit_mask

    def _outputs(self, out, lay: Layout, starts: list[int], lengths: list[int]):
        """Split the forward's outputs per query row, keeping only this step's tokens."""
        r, n = lay.doc.shape
        j = torch.arange(n)
        keep = torch.stack([(j >= a) & (j < a + m) for a, m in zip(starts, lengths, strict=True)])
        keep = keep.to(lay.doc.device)
        pred = None
        if out.pred is not None:
            flat = torch.zeros(r, n, out.pred.shape[-1], dtype=out.pred.dtype, device=out.pred.device)
            flat[lay.noisy] = out.pred
            sel = lay.noisy & keep
            pred = flat[sel].reshape(r, -1, out.pred.shape[-1]) if sel.any() else None
        logits = None
        if out.text_logits is not None:
            is_text = (lay.modality == TEXT) & ~lay.noisy
            flat = torch.full((r, n, out.text_logits.shape[-1]), float("nan"), device=out.text_logits.device)
            flat[is_text] = out.text_logits.float()
            last = torch.where(is_text & keep, torch.arange(n, device=lay.doc.device), -1).max(1).values
            if (last >= 0).any():
                logits = flat[torch.arange(r), last.clamp(min=0)]
        return pred, logits

    # ----------------------------------------------------------------------------------- images

    def begin_image(self, cache_rows: list[int], grid: tuple[int, int, int]) -> None:
        """The rows start an image of `grid` patches at their current unit and RoPE index."""
        spec = self.cfg.block_spec
        if self.grid != grid:
            order = block_order(grid, spec)
            self.block_pos = grid_positions(grid)[order].reshape(spec.num_blocks(grid), -1, 3)
            self.grid = grid
        for c in cache_rows:
            self.image_unit[c], self.image_index[c] = self.unit[c], self.index[c]

    def end_image(self, cache_rows: list[int]) -> None:
        n = self.block_pos.shape[0]
        for c in cache_rows:
            self.unit[c] = self.image_unit[c] + n
            self.index[c] = self.image_index[c] + max(self.grid)

    def prefill_image(self, cache_rows: list[int], blocks: torch.Tensor) -> None:
        """Commit a given image's clean blocks (rows, N, B, D) in one forward."""
        segs = [
            [BlockSeg(k, blocks[q, k], noisy=False) for k in range(blocks.shape[1])] for q in range(len(cache_rows))
        ]
        self.run(cache_rows, segs, [True] * len(cache_rows))

    def generate_image(
        self,
        rows: list[int],
        sampler: Sampler,
        generators: list[torch.Generator],
        guidance: GuidanceSchedule | None = None,
        mode: str | None = None,
        labels: torch.Tensor | None = None,
        commit_last: bool = True,
    ) -> torch.Tensor:
        """Generate the current image of `rows` block by block; returns clean blocks (rows, N, B, D).

        mode None: no guidance; "class": branches share the cache rows, the unconditional one uses
        the null label; "text": the unconditional branch uses cache rows `rows + len(documents)`.
        """
        n_blocks, b, d = self.block_pos.shape[0], self.block_pos.shape[1], self.cfg.patch_dim
        g = len(rows)
        null = torch.full((g,), -1, dtype=torch.long)
        y = labels if labels is not None else null
        uncond_rows = self.uncond_rows(rows) if mode == "text" else rows
        clean: list[torch.Tensor] = []

        def fn(x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
            k = len(clean)
            prev = [BlockSeg(k - 1, clean[-1][q], noisy=False) for q in range(g)] if (i == 0 and k > 0) else None
            guided = guidance is not None and mode is not None and guidance.needs_uncond(i, sampler.num_calls, t)
            branches = [(rows, y, True)]
            if guided or (prev is not None and mode == "text"):  # text mode: keep the null-prompt cache in step
                branches.append((uncond_rows, null, mode == "text"))
            cache_rows, segs, commit, lab = [], [], [], []
            for br_rows, br_labels, br_commit in branches:
                for q, c in enumerate(br_rows):
                    cache_rows.append(c)
                    segs.append(([prev[q]] if prev is not None else []) + [BlockSeg(k, x[q], noisy=True)])
                    commit.append(br_commit and prev is not None)
                lab.append(br_labels)
            tt = torch.full((len(cache_rows),), float(t), device=self.device)
            pred, _ = self.run(cache_rows, segs, commit, t=tt, labels=torch.cat(lab).to(self.device))
            pred = pred.float().cpu()
            if not guided:
                return pred[:g]
            return apply(pred[:g], pred[g:], guidance.scale_at(i, sampler.num_calls, t))

        for _ in range(n_blocks):
            noise = torch.cat([torch.randn((1, b, d), generator=gen) for gen in generators])
            clean.append(sampler.sample(fn, noise, generators))
        if commit_last:
            last = [[BlockSeg(n_blocks - 1, clean[-1][q], noisy=False)] for q in range(g)]
            both = rows + (self.uncond_rows(rows) if mode == "text" else [])
            self.run(both, last * (2 if mode == "text" else 1), [True] * len(both))
        return torch.stack(clean, dim=1)

    def uncond_rows(self, rows: list[int]) -> list[int]:
        """Text-guidance mode: the cache rows of the unconditional branch (the second half)."""
        return [r + self.rows // 2 for r in rows]

    # ------------------------------------------------------------------------------------- text

    def text(self, cache_rows: list[int], ids: list[list[int]]) -> torch.Tensor | None:
        """Commit text tokens to the rows; the logits at each row's last new token (rows, vocab)."""
        return self.run(cache_rows, [[TextSeg(x)] for x in ids], [True] * len(cache_rows))[1]
