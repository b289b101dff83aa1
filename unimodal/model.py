"""UnifiedModel: one causal transformer trunk with a text head and a diffusion head.

Clean tokens (text and clean image blocks) form a plain pre-norm stream. Noisy tokens (the noisy
copies of image blocks) are modulated by AdaLN-Zero from their block's conditioning vector
(timestep embedding, plus class embedding in class-conditional mode). Which token sees which is
decided by the layout through the one attention rule; the same `forward` runs the full training
sequence and, given a `KVCache`, one incremental step of generation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import AttentionPlan
from .config import ModelConfig
from .forward_plan import ForwardPlan
from .kv_cache import CacheStep, KVCache
from .layout import TEXT, Layout, clean_twins
from .rope import RopeND


class RMSNorm(nn.Module):
    """RMSNorm with a learned weight, computed in float32 and cast back (as the official code)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[-1],)
        if x.dtype == torch.float32:  # one fused op: a few microseconds less per small decoding step
            return F.rms_norm(x, shape, self.weight, self.eps)
        # normalised in float32, then scaled in x's dtype (bf16 under autocast)
        return F.rms_norm(x.float(), shape, eps=self.eps).to(x.dtype) * self.weight.to(x.dtype)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features [cos, sin] (max period 10000) -> Linear -> SiLU -> Linear."""

    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.kind = cfg.mlp
        hidden = cfg.mlp_hidden
        if self.kind == "swiglu":
            self.fc1 = nn.Linear(cfg.dim, 2 * hidden, bias=False)
            self.fc2 = nn.Linear(hidden, cfg.dim, bias=False)
        else:
            self.fc1 = nn.Linear(cfg.dim, hidden)
            self.fc2 = nn.Linear(hidden, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.kind == "swiglu":
            a, b = h.chunk(2, dim=-1)
            h = F.silu(a) * b
        else:
            h = F.gelu(h, approximate="tanh" if self.kind == "gelu_tanh" else "none")
        return self.fc2(h)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=cfg.qkv_bias)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=cfg.qkv_bias)

    def forward(self, x, rope: RopeND, tables, plan: AttentionPlan, cache: CacheStep | None, layer: int):
        r, n, _ = x.shape
        q, k, v = self.qkv(x).view(r, n, 3, self.heads, self.head_dim).unbind(2)
        q = rope.rotate(self.q_norm(q), tables).transpose(1, 2)
        k = rope.rotate(self.k_norm(k), tables).transpose(1, 2)
        v = v.transpose(1, 2)
        if cache is not None:
            ck, cv = cache.keys(layer)  # views of the buffers: concatenate before this step writes
            k_new, v_new = k, v
            k = torch.cat([ck.to(k.dtype), k], dim=2)
            v = torch.cat([cv.to(v.dtype), v], dim=2)
            cache.write(layer, k_new, v_new)
        out = plan(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(r, n, -1))


class Block(nn.Module):
    """Pre-norm transformer block; AdaLN-Zero (shift, scale, gate) applies to noisy tokens only."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))

    def forward(self, x, table, gather, rope, tables, plan, cache, layer):
        """`table` (NB + 1, 6*dim): each block's (shift, scale, gate) x (attn, mlp) rows, then the
        identity row of clean tokens (None: no noisy token); `gather` (R, L): each token's row."""
        # index_select: its backward is an index_add, far cheaper on CPU than advanced indexing's
        mod = None if table is None else table.index_select(0, gather.flatten()).view(*gather.shape, -1)
        if mod is None:
            x = x + self.attn(self.norm1(x), rope, tables, plan, cache, layer)
            return x + self.mlp(self.norm2(x))
        sa, ca, ga, sm, cm, gm = mod.chunk(6, dim=-1)
        x = x + ga * self.attn(self.norm1(x) * (1 + ca) + sa, rope, tables, plan, cache, layer)
        return x + gm * self.mlp(self.norm2(x) * (1 + cm) + sm)


SAMPLE_MIN_T = 0.05


def velocity_from_sample(x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The flow velocity ε - x0 implied by a clean-sample estimate x0 (n, D) at x_t (n, D) and
    time t (n,): (x_t - x0) / t, with t floored at SAMPLE_MIN_T, in float32."""
    return (xt.float() - x0.float()) / t.float().clamp_min(SAMPLE_MIN_T).unsqueeze(-1)


def _precondition_denominator(t: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """The variance of x_t = (1 - t)·x0 + t·ε for x0 of standard deviation sigma_data."""
    return (1 - t) ** 2 * sigma_data**2 + t**2


def preconditioning(t: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of x̂0 = c_skip·x_t + c_out·F on the flow path x_t = (1 - t)·x0 + t·ε, for data
    of standard deviation sigma_data: c_skip·x_t is the best linear estimate of x0, and c_out the
    standard deviation of what is left, so F's target has unit variance (EDM's preconditioning)."""
    t = t.float()
    d = _precondition_denominator(t, sigma_data)
    return (1 - t) * sigma_data**2 / d, t * sigma_data / d.sqrt()


def velocity_from_preconditioned(f: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """The flow velocity (x_t - x̂0) / t of x̂0 = c_skip·x_t + c_out·F, written without dividing by t
    (both coefficients have finite limits at t = 0), in float32. f, xt (n, D); t (n,)."""
    t = t.float().unsqueeze(-1)
    d = _precondition_denominator(t, sigma_data)
    return (t - (1 - t) * sigma_data**2) / d * xt.float() - sigma_data / d.sqrt() * f.float()


class FinalLayer(nn.Module):
    """Diffusion head: RMSNorm -> AdaLN (shift, scale) -> Linear to patch features."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm_final = RMSNorm(cfg.dim, cfg.norm_eps)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 2 * cfg.dim))
        self.linear = nn.Linear(cfg.dim, cfg.patch_dim)

    def forward(self, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """x (n, dim) noisy tokens, table (n, 2*dim) their rows of `adaLN_modulation(cond)`."""
        shift, scale = table.chunk(2, dim=-1)
        return self.linear(self.norm_final(x) * (1 + scale) + shift)


@dataclass
class ModelOutput:
    """hidden: (R, L, dim) trunk output.  pred: (n_noisy, patch_dim) diffusion-head output at the
    layout's noisy tokens (row-major order), or None.  text_logits: (n_text, vocab) at clean text
    tokens (row-major order), or None.  align: with `cfg.align_layer`, in a training forward, the
    projected noisy hidden states and their clean copies' (detached) targets, each (n_noisy, dim)."""

    hidden: torch.Tensor
    pred: torch.Tensor | None
    text_logits: torch.Tensor | None
    align: tuple[torch.Tensor, torch.Tensor] | None = None


class UnifiedModel(nn.Module):
    """The unified text + image (+ video) transformer of ARCHITECTURE.md §3."""

    ADALN_MEMO_BYTES = 256 << 20  # bound of the no-grad AdaLN memo (cleared whole when it would pass)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.x_embedder = nn.Linear(cfg.patch_dim, cfg.dim, bias=False)
        # the previous clean estimate x̂0 of a noisy token (self-conditioning), added to its input
        self.sc_embedder = nn.Linear(cfg.patch_dim, cfg.dim, bias=False) if cfg.self_condition else None
        self.t_embedder = TimestepEmbedder(cfg.dim, cfg.timestep_freq_dim)
        self.y_embedder = nn.Embedding(cfg.num_classes + 1, cfg.dim) if cfg.num_classes else None
        self.tok_embedder = nn.Embedding(cfg.vocab_size, cfg.dim) if cfg.vocab_size else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(cfg)
        # REPA's projector (an MLP, unused at inference): noisy hidden states toward clean targets
        self.align_proj = None
        if cfg.align_layer:
            self.align_proj = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        if cfg.vocab_size:
            self.text_norm = RMSNorm(cfg.dim, cfg.norm_eps)
            self.text_head = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.rope = RopeND(cfg.head_dim, tuple(cfg.rope_sections), tuple(cfg.rope_theta), cfg.rope)
        self._adaln_memo: dict[tuple, tuple] = {}
        self._adaln_bytes = 0
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT-style: xavier-uniform linears, N(0, 0.02) embeddings, zero AdaLN and diffusion output;
        with `residual_init: zero` also zero attention and MLP output projections (as modded-nanogpt)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for emb in (self.y_embedder, self.tok_embedder):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.02)
        for lin in self.t_embedder.mlp[0], self.t_embedder.mlp[2]:
            nn.init.normal_(lin.weight, std=0.02)
        if self.cfg.vocab_size and self.text_head is not None:
            nn.init.normal_(self.text_head.weight, std=0.02)
        for blk in self.blocks:
            nn.init.zeros_(blk.adaLN_modulation[-1].weight)
            nn.init.zeros_(blk.adaLN_modulation[-1].bias)
            if self.cfg.residual_init == "zero":  # every block starts as the identity, clean tokens too
                nn.init.zeros_(blk.attn.proj.weight)
                nn.init.zeros_(blk.mlp.fc2.weight)
        for lin in self.final_layer.adaLN_modulation[-1], self.final_layer.linear:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        if self.sc_embedder is not None:  # starts as the model without self-conditioning
            nn.init.zeros_(self.sc_embedder.weight)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def condition(self, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Per-block conditioning vectors (NB, dim): timestep embedding (+ class embedding; label -1
        or an absent label is the null class used for guidance)."""
        c = self.t_embedder(t)
        if self.y_embedder is not None:
            null = self.cfg.num_classes
            y = torch.full_like(t, null, dtype=torch.long) if labels is None else labels
            c = c + self.y_embedder(torch.where(y < 0, null, y))
        return c

    def adaln_tables(self, t: torch.Tensor, labels: torch.Tensor | None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Each block's modulation table (NB + 1, 6*dim; the last row is the identity of clean
        tokens) and the diffusion head's (NB, 2*dim), for per-block times t (NB,) and labels.

        In eval mode without gradients the rows are remembered per distinct (t, label) for as long
        as the weights stay the same: a sampler runs the same few timesteps for every block of
        every image, and these matrix-vector products are a fixed cost of each small denoising
        step. A training step's extra forwards without gradients (self-conditioning, the model's
        own context) draw new times under new weights every step: nothing to remember there."""
        if not torch.is_grad_enabled() and not self.training:  # training: new weights every step
            return self._remembered_tables(t, labels)
        cond = self.condition(self.timestep_input(t), labels)
        rows = [blk.adaLN_modulation(cond) for blk in self.blocks]
        head = self.final_layer.adaLN_modulation(cond)
        return [self._with_identity(r) for r in rows], head

    def _with_identity(self, rows: torch.Tensor) -> torch.Tensor:
        """A block's table: its (NB, 6*dim) rows, then the identity row of clean tokens (no shift,
        no scale, gates 1)."""
        d = self.cfg.dim
        identity = torch.zeros(1, 6 * d, dtype=rows.dtype, device=rows.device)
        identity[:, 2 * d : 3 * d] = 1.0  # gate_attn
        identity[:, 5 * d :] = 1.0  # gate_mlp
        return torch.cat([rows, identity])

    def _remembered_tables(self, t: torch.Tensor, labels: torch.Tensor | None) -> tuple[list, torch.Tensor]:
        """`adaln_tables` without gradients: whole tables are remembered per sequence of (t, label)
        (a sampler's step repeats for every block), rows per distinct (t, label)."""
        keys = self._adaln_keys(t, labels)
        whole = ("tables", tuple(keys))
        value = self._adaln_memo.get(whole)
        if value is None:
            stacked, head = self._remembered_rows(t, keys)
            value = ([self._with_identity(r) for r in stacked.unbind(1)], head)
            nbytes = (sum(x.numel() for x in value[0]) + head.numel()) * head.element_size()
            self._remember(whole, value, nbytes)
        return value

    def _adaln_keys(self, t: torch.Tensor, labels: torch.Tensor | None) -> list[tuple]:
        """One memo key per block: the weights' state (storage, version; autocast dtype, device) and
        its (t, label)."""
        dev = t.device.type
        state = (
            torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None,
            t.device,
            tuple((p.data_ptr(), p._version) for p in self._adaln_params()),  # moved, cast or updated
        )
        y = torch.full_like(t, -1, dtype=torch.long) if labels is None else labels.long().clamp(min=-1)
        return [(state, a, b) for a, b in zip(t.tolist(), y.tolist(), strict=True)]

    def _remember(self, key: tuple, value, nbytes: int) -> None:
        """Store in the AdaLN memo, bounded at ADALN_MEMO_BYTES (cleared whole when it would pass that)."""
        if self._adaln_bytes + nbytes > self.ADALN_MEMO_BYTES:
            self._adaln_memo.clear()
            self._adaln_bytes = 0
        self._adaln_memo[key] = value
        self._adaln_bytes += nbytes

    def _remembered_rows(self, t: torch.Tensor, keys: list[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
        """(NB, depth, 6*dim) block rows and (NB, 2*dim) head rows, from the memo where it has them."""
        memo = self._adaln_memo
        found = {k: memo[k] for k in keys if k in memo}  # taken now: storing below may clear the memo
        new = list(dict.fromkeys(k for k in keys if k not in found))
        if new:
            tt = torch.tensor([k[1] for k in new], dtype=t.dtype, device=t.device)
            yy = torch.tensor([k[2] for k in new], dtype=torch.long, device=t.device)
            cond = self.condition(self.timestep_input(tt), yy)
            rows = torch.stack([blk.adaLN_modulation(cond) for blk in self.blocks], 1)
            head = self.final_layer.adaLN_modulation(cond)
            pair_bytes = (rows[0].numel() + head[0].numel()) * rows.element_size()
            for i, k in enumerate(new):
                found[k] = (rows[i], head[i])
                self._remember(k, found[k], pair_bytes)
        pairs = [found[k] for k in keys]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def _adaln_params(self):
        """The weights the AdaLN rows depend on."""
        yield from self.t_embedder.parameters()
        if self.y_embedder is not None:
            yield from self.y_embedder.parameters()
        for blk in self.blocks:
            yield from blk.adaLN_modulation.parameters()
        yield from self.final_layer.adaLN_modulation.parameters()

    def timestep_input(self, t: torch.Tensor) -> torch.Tensor:
        """What the timestep embedder sees: DDPM step indices as they are, flow times in [0, 1] x 1000."""
        return t * 1000.0 if self.cfg.diffusion == "flow" else t

    def forward(
        self,
        tokens: torch.Tensor,
        patches: torch.Tensor,
        layout: Layout,
        t: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cache: KVCache | None = None,
        commit: torch.Tensor | None = None,
        cache_rows: torch.Tensor | None = None,
        backend: str | None = None,
        heads: bool = True,
        depth: int | None = None,
        plan: ForwardPlan | None = None,
        self_cond: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Run the trunk over the tokens described by `layout` (R, L).

        tokens (R, L) text ids; patches (R, L, patch_dim) visual features (noisy copies already
        noised); t (NB,) per-block diffusion time and labels (NB,) per-block class, indexed by
        `layout.block`. With `cache`, the tokens attend to the cached clean context as well (query
        row r reads cache row `cache_rows[r]`, default r), and the tokens flagged in `commit` (R, L)
        are appended to the cache. `depth` runs only the first `depth` blocks and returns their
        hidden states without heads (embeddings from an intermediate layer). `plan` (from `plan`)
        replaces cache, commit, cache_rows and backend: a sampler's steps over one layout reuse it.
        `self_cond` (n_noisy, patch_dim), for a model with `self_condition`: the previous clean
        estimate x̂0 at each noisy token (row-major order, as `pred`); None reads as zero.
        """
        cfg = self.cfg
        if plan is None:
            plan = self.plan(layout, cache, commit, cache_rows, backend)
        elif cache is not None or commit is not None or cache_rows is not None:
            raise ValueError("pass the cache, commit and cache_rows to `plan`, not with a plan")
        elif plan.layout is not layout:
            raise ValueError("the plan was built for another layout: pass the layout given to `plan`")
        if depth is not None and plan.step is not None:
            raise ValueError("depth (a partial forward) cannot be combined with a KV cache")
        plan.begin()
        # with gradients, every weight joins the graph even where its modality is absent (ZeRO)
        grad = torch.is_grad_enabled()
        x = self.x_embedder(patches.to(self.x_embedder.weight.dtype))
        if cfg.abs_pos == "sincos":
            x = x + plan.abs_positions(cfg.dim, x.dtype)
        x = self._add_self_condition(x, layout.noisy, self_cond, grad)
        if self.tok_embedder is not None and (plan.has_text or grad):
            is_text = (layout.modality == TEXT).unsqueeze(-1)
            x = torch.where(is_text, self.tok_embedder(tokens.clamp(0, cfg.vocab_size - 1)).to(x.dtype), x)
        noisy = layout.noisy
        mods, head_table = [None] * cfg.depth, None
        if plan.has_noisy and t is None:
            raise ValueError("the layout has noisy tokens but no timesteps t were given")
        if plan.has_noisy or (self.training and grad):
            # a training batch without noisy tokens (only captioning) still runs the AdaLN path on
            # zero blocks: every weight joins the graph (zero gradients), as data-parallel ZeRO
            # needs every rank to reduce the same gradients, and ZeRO-3 gathers weights only here
            if not plan.has_noisy:
                t, labels = torch.zeros(0, device=x.device), None
            mods, head_table = self.adaln_tables(t, labels)
        gather = plan.gather(t.shape[0]) if head_table is not None else None
        step = plan.step
        # the tables in the dtype q and k will have (bf16 under autocast), cast once for all layers
        dev = x.device.type
        tables = plan.rope_tables(torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype)
        blocks = self.blocks if depth is None else self.blocks[:depth]
        aligning = self.align_proj is not None and grad and heads and depth is None and step is None
        inner: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(blocks):
            args = (x, mods[i], gather, self.rope, tables, plan.attention, step, i)
            if cfg.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, *args, use_reentrant=False)
            else:
                x = blk(*args)
            if aligning and i + 1 in (cfg.align_layer, cfg.depth - 1):
                inner[i + 1] = x
        if step is not None:
            step.end()
        if not heads or depth is not None:
            return ModelOutput(x, None, None)
        pred = None
        if head_table is not None and (plan.has_noisy or grad):
            block = layout.block[noisy]
            pred = self.final_layer(x[noisy], head_table[block])
            if cfg.prediction == "sample":
                pred = velocity_from_sample(pred, patches[noisy], t[block])
            elif cfg.prediction == "preconditioned":
                pred = velocity_from_preconditioned(pred, patches[noisy], t[block], cfg.sigma_data)
        text_logits = None
        if self.tok_embedder is not None and (plan.has_text or grad):
            text_logits = self.text_logits(x[(layout.modality == TEXT) & ~noisy])
        align = None
        if aligning:
            rows, cols = clean_twins(layout, cfg.block_spec.block_len(cfg.grid))
            align = (self.align_proj(inner[cfg.align_layer][noisy]), inner[cfg.depth - 1][rows, cols].detach())
        return ModelOutput(x, pred, text_logits, align)

    def _add_self_condition(self, x, noisy, self_cond: torch.Tensor | None, grad: bool) -> torch.Tensor:
        """x plus the projected previous estimates at the noisy tokens. Without estimates nothing
        is added, except with gradients, where zeros keep the projection in the graph (ZeRO)."""
        if self.sc_embedder is None:
            if self_cond is not None:
                raise ValueError("self_cond given to a model without model.self_condition")
            return x
        if self_cond is None and not grad:
            return x
        w = self.sc_embedder.weight
        sc = torch.zeros(*x.shape[:-1], w.shape[1], dtype=w.dtype, device=x.device)
        if self_cond is not None:
            if self_cond.shape != (int(noisy.sum()), w.shape[1]):
                raise ValueError(f"self_cond of shape {tuple(self_cond.shape)} for {int(noisy.sum())} noisy tokens")
            sc[noisy] = self_cond.to(w.dtype)
        return x + self.sc_embedder(sc).to(x.dtype)

    def plan(
        self,
        layout: Layout,
        cache: KVCache | None = None,
        commit: torch.Tensor | None = None,
        cache_rows: torch.Tensor | None = None,
        backend: str | None = None,
    ) -> ForwardPlan:
        """The layout-derived part of a forward (mask, cache view, RoPE tables), to pass to
        several `forward(..., plan=...)` calls over the same layout (a sampler's steps)."""
        needs_grad = torch.is_grad_enabled() and self.x_embedder.weight.requires_grad
        backend = backend or ("dense" if cache is not None else self.cfg.attention)
        return ForwardPlan(layout, self.rope, cache, commit, cache_rows, backend, needs_grad)

    def text_logits(self, h: torch.Tensor) -> torch.Tensor:
        h = self.text_norm(h)
        w = self.tok_embedder.weight if self.text_head is None else self.text_head.weight
        return F.linear(h, w.to(h.dtype))

    def save_pretrained(self, directory, tokenizer=None):
        """Write model.safetensors, config.json and the tokenizer to `directory` (see unimodal.hub)."""
        from .hub import save_pretrained

        return save_pretrained(self, directory, tokenizer)

    @classmethod
    def from_pretrained(cls, directory, allow_pickle: bool = False, device="cpu") -> UnifiedModel:
        """The model saved in `directory` (its tokenizer: `unimodal.hub.load_pretrained`)."""
        from .hub import load_pretrained

        return load_pretrained(directory, allow_pickle, device)[0]

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache for `batch` rows of up to `max_len` clean tokens."""
        p = self.x_embedder.weight
        return KVCache(self.cfg.depth, batch, self.cfg.heads, self.cfg.head_dim, max_len, dtype or p.dtype, p.device)
