"""Attention backends for the one rule: dense SDPA (the reference), FlexAttention, xformers.

`plan_attention` is called once per layout (not per layer or step): it builds the backend's mask
object from the query and key fields and returns an `AttentionPlan` that every layer calls with
its q, k, v of shape (R, heads, L, head_dim).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .rule import allowed

BACKENDS = ("dense", "flex", "xformers")
FLEX_TILE = 128  # FlexAttention's block size: rows are padded to a multiple of it for that backend


@dataclass
class Fields:
    """What the rule reads per token: doc, unit, stream (0 clean, c >= 1 the c-th noisy copy), and
    the token's index along its axis (R, L)."""

    doc: torch.Tensor
    unit: torch.Tensor
    stream: torch.Tensor
    idx: torch.Tensor

    @classmethod
    def of(cls, layout, offset: int = 0) -> Fields:
        """Fields of a `Layout`, token indices starting at `offset` (the cache length in inference)."""
        r, n = layout.doc.shape
        idx = torch.arange(offset, offset + n, device=layout.doc.device).expand(r, n)
        return cls(layout.doc, layout.unit, layout.stream, idx)

    def cat(self, other: Fields) -> Fields:
        return Fields(*(torch.cat([a, b], dim=1) for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple[torch.Tensor, ...]:
        return self.doc, self.unit, self.stream, self.idx


def dense_mask(q: Fields, k: Fields) -> torch.Tensor:
    """Boolean mask (R, 1, Lq, Lk) of the rule, vectorised (no Python loops)."""
    qs = [t[:, :, None] for t in q.astuple()]
    ks = [t[:, None, :] for t in k.astuple()]
    return allowed(*qs, *ks).unsqueeze(1)


def xformers_problem() -> str | None:
    """Why the xformers backend cannot run here, or None when it can: it needs CUDA, the package,
    and the package's compiled kernels (a wheel built for another torch or CUDA imports fine but
    has none, and would fail at the first attention call)."""
    if not torch.cuda.is_available():
        return "it needs CUDA (no GPU visible to torch)"
    try:
        import xformers
    except ImportError:
        return "the xformers package is not installed"
    if not getattr(xformers, "_has_cpp_library", True):
        return (
            f"xformers {xformers.__version__} has no compiled kernels for torch {torch.__version__} "
            "(it was built for another torch or CUDA version; install the xformers build that matches this torch)"
        )
    try:
        import xformers.ops  # noqa: F401
    except ImportError as e:
        return f"xformers.ops does not import: {e}"
    return None


def xformers_available() -> bool:
    return xformers_problem() is None


def resolve_backend(name: str, length: int, device: torch.device, needs_grad: bool = False) -> str:
    """`auto`: FlexAttention for long rows, dense SDPA otherwise. On CUDA from 4096 tokens: below it
    dense trains faster on an H100 (0.37 against 1.09 ms at 2048) and its mask is small, and flex
    compiles once per packed row count (docs/benchmarks.md, GPU). On the CPU from 2048 tokens and
    only without gradients (torch's FlexAttention has no CPU backward)."""
    if name != "auto":
        if name not in BACKENDS:
            raise ValueError(f"attention backend must be one of {('auto',) + BACKENDS}, got {name!r}")
        if name == "xformers" and (problem := xformers_problem()) is not None:
            raise RuntimeError(f"attention backend 'xformers' cannot run: {problem}")
        return name
    if (device.type == "cuda" and length >= 4096) or (device.type != "cuda" and length >= 2048 and not needs_grad):
        return "flex"
    return "dense"


@functools.cache
def _compiled_flex():
    """FlexAttention compiled once per process, with static shapes: each new (rows, length) pair
    compiles its own kernel (~5 s on an H100, ~20 s on a 2-core CPU); packed batches vary over a
    few row counts, so a run pays a few compilations once. Automatic dynamic shapes were tried
    (docs/benchmarks.md, "GPU"): no compilations after the first change of shape on an H100, but a
    median step of 87 ms against 61 ms static (two machines, so indicative only), and on the CPU
    inductor fails to compile the dynamic kernel for this mask (torch 2.13)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


class AttentionPlan:
    """A prepared mask for one layout; call it as plan(q, k, v) -> (R, heads, Lq, head_dim)."""

    def __init__(self, q: Fields, k: Fields, backend: str) -> None:
        self.backend = backend
        if backend == "dense":
            self.mask = dense_mask(q, k)
        elif backend == "flex":
            from torch.nn.attention.flex_attention import create_block_mask

            qd, qu, qn, _ = q.astuple()
            kd, ku, kn, _ = k.astuple()

            def mask_mod(b, h, qi, ki):
                return allowed(qd[b, qi], qu[b, qi], qn[b, qi], qi, kd[b, ki], ku[b, ki], kn[b, ki], ki)

            r, lq = qd.shape
            self.mask = create_block_mask(mask_mod, r, None, lq, kd.shape[1], device=qd.device)
        elif backend == "xformers":
            self.mask = dense_mask(q, k)
            self._bias: dict[tuple, torch.Tensor] = {}
        else:
            raise ValueError(f"unknown attention backend {backend!r}")

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.backend == "dense":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        if self.backend == "flex":
            if q.device.type == "cpu" and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
                raise RuntimeError(
                    "FlexAttention has no backward on CPU in this torch; train with attention='dense' or 'auto'"
                )
            return _compiled_flex()(q, k, v, block_mask=self.mask)
        import xformers.ops as xops

        out = xops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=self._xformers_bias(q)
        )
        return out.transpose(1, 2)

    def _xformers_bias(self, q: torch.Tensor) -> torch.Tensor:
        """Additive bias (R, heads, Lq, Lk) in q's dtype, stored with its last dim padded to 8 as
        xformers requires; built once per dtype and head count, shared by every layer."""
        key = (q.dtype, q.shape[1])
        if key not in self._bias:
            r, _, lq, lk = self.mask.shape
            bias = torch.full((r, q.shape[1], lq, -(-lk // 8) * 8), float("-inf"), dtype=q.dtype, device=q.device)
            bias[..., :lk].masked_fill_(self.mask, 0.0)
            self._bias[key] = bias[..., :lk]
        return self._bias[key]
