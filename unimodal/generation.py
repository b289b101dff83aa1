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

from .diffusion import sample_from_velocity
from .guidance import GuidanceSchedule, apply
from .layout import PAD, TEXT, VISUAL, Layout
from .model import UnifiedModel
from .patches import block_positions
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


def _cat(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Token fields of a followed by b (a may be empty)."""
    return {k: torch.cat([a[k], v]) for k, v in b.items()} if a else dict(b)


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
        self.history: list[dict[str, torch.Tensor]] = [{} for _ in range(rows)]  # uncached: committed tokens
        self.grid: tuple[int, int, int] | None = None
        self.blocks: list[dict[int, torch.Tensor]] = [{} for _ in range(rows)]  # committed clean blocks
        self._plans: dict[tuple, tuple] = {}  # (block, rows) -> (layout, tokens, ForwardPlan), current block

    # ------------------------------------------------------------------------------- one forward

    def run(
        self,
        cache_rows: list[int],
        segs: list[list[TextSeg | BlockSeg]],
        commit: list[bool],
        t: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        self_cond: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One forward: query row q appends `segs[q]` to cache row `cache_rows[q]` (committing its
        clean tokens if `commit[q]`). Returns the noisy predictions (Rq, B, D) of the rows' noisy
        blocks (or None) and the logits (Rq, vocab) at each row's last text token (or None).
        `self_cond` (Rq, B, D): the previous clean estimates of the rows' noisy blocks."""
        sc = None if self_cond is None else self_cond.reshape(-1, self_cond.shape[-1]).to(self.device)
        chunks = [self._chunk(c, s) for c, s in zip(cache_rows, segs, strict=True)]
        for c, s, keep in zip(cache_rows, segs, commit, strict=True):
            if keep:
                self._advance(c, s)
                self.blocks[c].update({b.k: b.x for b in s if isinstance(b, BlockSeg) and not b.noisy})
        if self.use_cache:
            starts = [0] * len(chunks)
            lay, tokens, patches, commit_mask = self._pack(chunks, commit)
            rows_t = torch.tensor(cache_rows, device=self.device)
            out = self.model(
                tokens,
                patches,
                lay,
                t=t,
                labels=labels,
                cache=self.cache,
                commit=commit_mask,
                cache_rows=rows_t,
                self_cond=sc,
            )
        else:  # the whole prefix again, through the training forward
            starts = [len(self.history[c].get("unit", ())) for c in cache_rows]
            full = [_cat(self.history[c], ch) for c, ch in zip(cache_rows, chunks, strict=True)]
            lay, tokens, patches, _ = self._pack(full, None)
            out = self.model(tokens, patches, lay, t=t, labels=labels, backend="dense", self_cond=sc)
            for c, ch, keep in zip(cache_rows, chunks, commit, strict=True):
                if keep:
                    clean = ~ch["noisy"]
                    self.history[c] = _cat(self.history[c], {k: v[clean] for k, v in ch.items()})
        return self._outputs(out, lay, starts, [len(ch["unit"]) for ch in chunks])

    def denoise(
        self,
        cache_rows: list[int],
        k: int,
        x: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor,
        self_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """A denoising step that commits nothing: block k's noisy values x (Rq, B, D) of query rows
        reading `cache_rows` (and their previous clean estimates `self_cond`, alike); returns the
        predictions (Rq, B, D). With the cache, the step's layout and `ForwardPlan` (mask, cache
        view, RoPE tables) are built once per block and row set and reused by the sampler's later
        steps; only x and t change between them."""
        if not self.use_cache:
            segs = [[BlockSeg(k, x[q], noisy=True)] for q in range(len(cache_rows))]
            return self.run(cache_rows, segs, [False] * len(cache_rows), t=t, labels=labels, self_cond=self_cond)[0]
        key = (k, tuple(cache_rows))
        if key not in self._plans or not self._plans[key][2].reusable():
            if any(other[0] != k for other in self._plans):
                self._plans.clear()  # a new block: the cache has grown since
            chunks = [self._chunk(c, [BlockSeg(k, x[q], noisy=True)]) for q, c in enumerate(cache_rows)]
            lay, tokens, _, _ = self._pack(chunks, None)
            plan = self.model.plan(lay, self.cache, cache_rows=torch.tensor(cache_rows, device=self.device))
            self._plans[key] = (lay, tokens, plan)
        lay, tokens, plan = self._plans[key]
        sc = None if self_cond is None else self_cond.reshape(-1, x.shape[-1]).to(self.device)
        out = self.model(tokens, x.to(self.device, self.dtype), lay, t=t, labels=labels, plan=plan, self_cond=sc)
        return out.pred.view(x.shape)

    def _chunk(self, c: int, segs: list[TextSeg | BlockSeg]) -> dict[str, torch.Tensor]:
        """Per-token fields (token, patch, unit, pos, noisy, mod, origin) of segments appended to cache row
        c, as tensors (state not yet advanced)."""
        parts = []
        unit, index = int(self.unit[c]), int(self.index[c])
        d = self.cfg.patch_dim
        for s in segs:
            if isinstance(s, TextSeg):
                n = len(s.ids)
                ar = torch.arange(n)
                parts.append(
                    dict(
                        token=torch.tensor(s.ids, dtype=torch.long),
                        patch=torch.zeros(n, d),
                        unit=unit + ar,
                        pos=(index + ar).unsqueeze(1).expand(n, 3),
                        noisy=torch.zeros(n, dtype=torch.bool),
                        mod=torch.full((n,), TEXT),
                        origin=torch.zeros(n, dtype=torch.long),
                    )
                )
                unit, index = unit + n, index + n
            else:
                b = self.block_pos.shape[1]
                parts.append(
                    dict(
                        token=torch.zeros(b, dtype=torch.long),
                        patch=s.x.float().cpu(),
                        unit=torch.full((b,), int(self.image_unit[c]) + s.k),
                        pos=self.block_pos[s.k] + self.image_index[c],
                        noisy=torch.full((b,), s.noisy),
                        mod=torch.full((b,), VISUAL),
                        origin=torch.full((b,), int(self.image_index[c])),
                    )
                )
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _advance(self, c: int, segs: list[TextSeg | BlockSeg]) -> None:
        for s in segs:
            if isinstance(s, TextSeg):
                self.unit[c] += len(s.ids)
                self.index[c] += len(s.ids)

    def _pack(self, chunks: list[dict[str, torch.Tensor]], commit: list[bool] | None):
        """Right-padded step tensors: the layout, tokens, patches and the commit mask."""
        r, n = len(chunks), max(len(ch["unit"]) for ch in chunks)
        lengths = torch.tensor([len(ch["unit"]) for ch in chunks])
        real = torch.arange(n) < lengths[:, None]

        def pad(key: str, fill) -> torch.Tensor:
            first = chunks[0][key]
            out = torch.full((r, n, *first.shape[1:]), fill, dtype=first.dtype)
            out[real] = torch.cat([ch[key] for ch in chunks])
            return out

        noisy = pad("noisy", False)
        mod = pad("mod", PAD)
        # t and labels are per query row: a row's noisy tokens index the row's entry
        block = torch.where(noisy, torch.arange(r)[:, None], -1)
        lay = Layout(torch.where(real, 0, -1), pad("unit", 0), noisy, mod, pad("pos", 0), block, pad("origin", 0))
        lay = lay.to(self.device)
        commit_mask = None if commit is None else (real & ~noisy & torch.tensor(commit)[:, None]).to(self.device)
        tokens, patches = pad("token", 0).to(self.device), pad("patch", 0.0).to(self.device, self.dtype)
        return lay, tokens, patches, commit_mask

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
            self.block_pos = block_positions(grid, spec)
            self.grid = grid
        for c in cache_rows:
            self.image_unit[c], self.image_index[c] = self.unit[c], self.index[c]
        self._plans.clear()

    def end_image(self, cache_rows: list[int]) -> None:
        n = self.block_pos.shape[0]
        for c in cache_rows:
            self.unit[c] = self.image_unit[c] + n
            self.index[c] = self.image_index[c] + max(self.grid)

    def prefill_image(self, cache_rows: list[int], blocks: torch.Tensor, first: int = 0) -> None:
        """Commit given clean blocks (rows, n, B, D), blocks first..first+n-1 of the current image,
        in one forward."""
        n = blocks.shape[1]
        segs = [[BlockSeg(first + k, blocks[q, k], noisy=False) for k in range(n)] for q in range(len(cache_rows))]
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
        first: int = 0,
        window: int | None = None,
    ) -> torch.Tensor:
        """Generate blocks `first`.. of the current image of `rows`; returns them (rows, n, B, D).

        Blocks before `first` must already be committed (given frames to continue). mode None: no
        guidance; "class": branches share the cache rows, the unconditional one uses the null
        label; "text": the unconditional branch uses cache rows `rows + len(documents)`. `window`
        keeps only that many earlier blocks of this image in the context (a bounded cache for
        long videos; the prompt stays).
        """
        n_blocks, b, d = self.block_pos.shape[0], self.block_pos.shape[1], self.cfg.patch_dim
        g = len(rows)
        null = torch.full((g,), -1, dtype=torch.long)
        y = labels if labels is not None else null
        uncond_rows = self.uncond_rows(rows) if mode == "text" else rows
        both = rows + (uncond_rows if mode == "text" else [])
        clean: list[torch.Tensor] = []  # blocks generated here; the last one is not committed yet
        unit_t = sampler.unit_timesteps  # guidance intervals are stated in [0, 1] (1 = noise) for every model
        estimate: torch.Tensor | None = None  # self-conditioning: the block's last (guided) x̂0

        def fn(x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
            nonlocal estimate
            k = first + len(clean)
            if i == 0:
                estimate = None
            prev = [BlockSeg(k - 1, clean[-1][q], noisy=False) for q in range(g)] if (i == 0 and clean) else None
            guided = mode is not None and guidance is not None and guidance.needs_uncond(i, len(unit_t), unit_t[i])
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
            lab = torch.cat(lab).to(self.device)
            sc = None if estimate is None else estimate.repeat(len(branches), 1, 1)
            if prev is None:  # nothing to commit: the same layout as the block's other steps
                pred = self.denoise(cache_rows, k, x.repeat(len(branches), 1, 1), tt, lab, sc)
            else:
                pred, _ = self.run(cache_rows, segs, commit, t=tt, labels=lab, self_cond=sc)
            pred = pred.float().cpu()
            if guided:
                pred = apply(pred[:g], pred[g:], guidance.scale_at(i, sampler.num_calls, unit_t[i]))
            if self.cfg.self_condition:
                estimate = sample_from_velocity(pred[:g], x, t)
            return pred[:g]

        for k in range(first, n_blocks):
            if window is not None and k - window > 0:
                self.evict(both, 0, k - window)  # block k-1 is committed with block k's first step
            noise = torch.cat([torch.randn((1, b, d), generator=gen) for gen in generators])
            clean.append(sampler.sample(fn, noise, generators))
        if commit_last and clean:
            last = [BlockSeg(n_blocks - 1, clean[-1][q], noisy=False) for q in range(g)]
            self.run(both, [[seg] for seg in last * (len(both) // g)], [True] * len(both))
        return torch.stack(clean, dim=1)

    def evict(self, cache_rows: list[int], lo: int, hi: int) -> None:
        """Drop blocks lo..hi-1 of the rows' current image from their context.

        The blocks kept after them are re-encoded as if the context started there (uncached: the
        history is simply recomputed without the dropped blocks; cached: the kept blocks are
        removed and prefilled again), so both paths compute the same thing and no cached value
        carries information from a dropped block."""
        kept = sorted(k for k in self.blocks[cache_rows[0]] if k >= hi)
        self._plans.clear()
        for c in cache_rows:
            u0 = int(self.image_unit[c])
            self.blocks[c] = {k: v for k, v in self.blocks[c].items() if k >= hi}
            if self.use_cache:
                self.cache.evict(c, u0 + lo, u0 + (kept[-1] + 1 if kept else hi))
            elif self.history[c]:
                h = self.history[c]
                keep = (h["unit"] < u0 + lo) | (h["unit"] >= u0 + hi)
                self.history[c] = {k: v[keep] for k, v in h.items()}
        if self.use_cache and kept:
            values = torch.stack([torch.stack([self.blocks[c][k] for k in kept]) for c in cache_rows])
            self.prefill_image(cache_rows, values, first=kept[0])

    def uncond_rows(self, rows: list[int]) -> list[int]:
        """Text-guidance mode: the cache rows of the unconditional branch (the second half)."""
        return [r + self.rows // 2 for r in rows]

    # ------------------------------------------------------------------------------------- text

    def text(self, cache_rows: list[int], ids: list[list[int]]) -> torch.Tensor | None:
        """Commit text tokens to the rows; the logits at each row's last new token (rows, vocab)."""
        return self.run(cache_rows, [[TextSeg(x)] for x in ids], [True] * len(cache_rows))[1]
