"""What a forward derives from its layout alone, built once and reusable across denoising steps.

A sampler calls the model S times per block with the same layout: only the noisy values and the
timestep change. The attention mask, the KV-cache view, the RoPE tables and the AdaLN row index do
not, so `UnifiedModel.plan` builds them once and `UnifiedModel.forward(..., plan=...)` reuses them.
A plan that commits tokens to the cache is good for one forward; a plan without commits may be
reused for as long as its cache rows keep their lengths (checked on every use).
"""

from __future__ import annotations

import torch

from .abs_pos import sincos_positions
from .attention import AttentionPlan, Fields, resolve_backend
from .kv_cache import CacheStep, KVCache
from .layout import TEXT, VISUAL, Layout
from .rope import RopeND


class ForwardPlan:
    """The layout-derived state of one forward: attention plan, cache step, RoPE tables, AdaLN rows."""

    def __init__(
        self,
        layout: Layout,
        rope: RopeND,
        cache: KVCache | None = None,
        commit: torch.Tensor | None = None,
        cache_rows: torch.Tensor | None = None,
        backend: str = "dense",
        needs_grad: bool = False,
    ) -> None:
        self.layout = layout
        self.has_noisy = bool(layout.noisy.any())
        self.has_text = bool((layout.modality == TEXT).any())
        self.step: CacheStep | None = None
        self.commits = commit is not None and bool(commit.any())
        self._uses = 0
        if cache is not None:
            self.step = cache.begin(layout, commit, cache_rows)
            self._lengths = cache.length[self.step.rows].clone()
            q = Fields.of(layout, offset=self.step.span)
            self.attention = AttentionPlan(q, self.step.fields().cat(q), "dense" if backend == "auto" else backend)
        else:
            q = Fields.of(layout)
            name = resolve_backend(backend, layout.doc.shape[1], layout.doc.device, needs_grad)
            self.attention = AttentionPlan(q, q, name)
        self._tables = rope.tables(layout.pos)
        self._cast: dict[torch.dtype, tuple[torch.Tensor, ...]] = {}
        self._gather: dict[int, torch.Tensor] = {}
        self._abs: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    def begin(self) -> None:
        """Called by each forward that uses the plan: refuses a second use of a committing plan and
        reuse after the cache rows it reads have changed."""
        if self._uses and self.commits:
            raise RuntimeError("a plan that commits to the KV cache can run only one forward")
        if self._uses and not self.reusable():
            raise RuntimeError("the KV cache rows of this plan changed since it was built; plan again")
        self._uses += 1

    def reusable(self) -> bool:
        """Whether another forward may use the plan: it commits nothing and its cache rows still
        hold what they held when it was built."""
        if self.commits:
            return self._uses == 0
        return self.step is None or torch.equal(self.step.cache.length[self.step.rows], self._lengths)

    def rope_tables(self, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """The RoPE tables in the dtype q and k have (bf16 under autocast), cast once for all layers."""
        if dtype not in self._cast:
            self._cast[dtype] = tuple(t.to(dtype) for t in self._tables)
        return self._cast[dtype]

    def gather(self, num_blocks: int) -> torch.Tensor:
        """Each token's AdaLN row (R, L): its block for noisy tokens, the identity row `num_blocks`
        (the row after the blocks' rows) for clean ones."""
        if num_blocks not in self._gather:
            lay = self.layout
            self._gather[num_blocks] = torch.where(lay.noisy, lay.block, num_blocks)
        return self._gather[num_blocks]

    def abs_positions(self, dim: int, dtype: torch.dtype) -> torch.Tensor:
        """(R, L, dim) sin-cos table of each visual token's position in its image (0 elsewhere)."""
        key = (dim, dtype)
        if key not in self._abs:
            lay = self.layout
            table = sincos_positions(lay.pos - lay.origin.unsqueeze(-1), dim)
            self._abs[key] = (table * (lay.modality == VISUAL).unsqueeze(-1)).to(dtype)
        return self._abs[key]
