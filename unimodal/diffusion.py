"""Diffusion parameterisations and the training losses.

- ``ddpm_eps``: the paper's ε-prediction on the DDPM linear-β schedule (β from 1e-4 to 0.02 over
  1000 steps, as diffusers' `DDPMScheduler()` defaults); t uniform over {0..999}.
- ``flow``: rectified flow, x_t = (1 - t) x_0 + t ε, velocity target ε - x_0, t logit-normal,
  optionally mixed with a uniform share (`uniform_fraction`).

Every visual block draws its own t (Diffusion-Forcing-style independent noise per unit). The
losses are text cross-entropy at clean text tokens and MSE at noisy tokens, weighted per
modality and reported separately, computed in float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .layout import IGNORE, TEXT, Batch

NUM_TRAIN_STEPS = 1000


def ddpm_alphas_cumprod(beta_start: float = 1e-4, beta_end: float = 0.02, steps: int = NUM_TRAIN_STEPS):
    """ᾱ_t of the linear-β schedule, in float32 as diffusers computes it."""
    betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


class Diffusion:
    """Noising and targets for one parameterisation (`ddpm_eps` or `flow`)."""

    def __init__(
        self,
        kind: str = "flow",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        uniform_fraction: float = 0.0,
        context_noise: float = 0.0,
        context: str = "noise",
    ) -> None:
        if kind not in ("ddpm_eps", "flow"):
            raise ValueError(f"diffusion must be 'ddpm_eps' or 'flow', got {kind!r}")
        if not 0.0 <= uniform_fraction <= 1.0:
            raise ValueError(f"uniform_fraction must be in [0, 1], got {uniform_fraction}")
        if not 0.0 <= context_noise <= 1.0 or context_noise and kind != "flow":
            raise ValueError(f"context_noise must be in [0, 1], and 0 unless the diffusion is flow: {context_noise}")
        if context not in ("noise", "model"):
            raise ValueError(f"context must be 'noise' or 'model', got {context!r}")
        self.kind = kind
        self.logit_mean, self.logit_std = logit_mean, logit_std
        self.uniform_fraction = uniform_fraction
        self.context_noise = context_noise
        self.context = context
        self.alphas_cumprod = ddpm_alphas_cumprod()

    def sample_t(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n independent timesteps: integer steps (ddpm_eps) or times in (0, 1) (flow): logit-normal,
        each replaced by a uniform draw with probability `uniform_fraction`."""
        if self.kind == "ddpm_eps":
            return torch.randint(0, NUM_TRAIN_STEPS, (n,), generator=generator)
        z = torch.randn(n, generator=generator) * self.logit_std + self.logit_mean
        t = torch.sigmoid(z)
        if self.uniform_fraction:  # no extra draws when off: runs without it keep their noise
            pick = torch.rand(n, generator=generator) < self.uniform_fraction
            t = torch.where(pick, torch.rand(n, generator=generator), t)
        return t

    def noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t and the regression target for clean x0 (n, D), noise eps and per-token t (n,)."""
        if self.kind == "ddpm_eps":
            acp = self.alphas_cumprod.to(x0.device)[t.long()].unsqueeze(-1)
            return acp.sqrt() * x0 + (1 - acp).sqrt() * eps, eps
        tt = t.to(x0.dtype).unsqueeze(-1)
        return (1 - tt) * x0 + tt * eps, eps - x0


def sample_from_velocity(v: torch.Tensor, xt: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """The clean estimate x̂0 = x_t - t·v on the flow path x_t = (1 - t)·x0 + t·ε, velocity v = ε - x0,
    in float32. v, xt (n, D); t (n,) per row, or one time for all."""
    t = torch.as_tensor(t, dtype=torch.float32, device=xt.device)
    return xt.float() - (t.unsqueeze(-1) if t.dim() else t) * v.float()


@dataclass
class NoisedBatch:
    """Model inputs for one training step: patches with noisy copies replaced by x_t, per-block t,
    and the diffusion target at noisy tokens (row-major order)."""

    patches: torch.Tensor
    t: torch.Tensor
    target: torch.Tensor


def noise_batch(
    batch: Batch,
    diffusion: Diffusion,
    generator: torch.Generator | None = None,
    reconstruct: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> NoisedBatch:
    """Draw one t per visual block and fresh noise per noisy token: from `generator`, or, when the
    batch carries `doc_keys`, from one generator per document seeded by its key.

    With `diffusion.context_noise` > 0 the clean copies of the blocks that train diffusion are
    noised too, each block to its own time s drawn uniformly from [0, context_noise]: the blocks
    after them learn to continue context that is not exactly right, as the model's own samples are
    at inference. Context-only images (captioning) and text stay clean. With `reconstruct`
    (`diffusion.context` "model", see `losses`) they become instead what the model makes of the
    noised copies: `reconstruct(patches, s)` takes the batch's patches with every noisy copy
    replaced by its block's clean copy noised to s, and returns the clean estimates x̂0 at the
    noisy tokens (row-major)."""
    lay = batch.layout
    noisy = lay.noisy
    x0 = batch.patches[noisy]
    blocks = lay.block[noisy]
    n_blocks = batch.block_label.numel()
    ctx = None
    if diffusion.context_noise:
        trains = torch.zeros(n_blocks, dtype=torch.bool, device=blocks.device)
        trains[blocks] = True
        ctx = ~noisy & (lay.block >= 0) & trains[lay.block.clamp(min=0)]
    n_ctx = int(ctx.sum()) if ctx is not None else 0
    if batch.doc_keys is None:
        t = diffusion.sample_t(n_blocks, generator)
        eps = torch.randn(x0.shape, generator=generator)
        if ctx is not None:
            s = torch.rand(n_blocks, generator=generator) * diffusion.context_noise
            e = torch.randn((n_ctx, x0.shape[-1]), generator=generator)
    else:
        t = torch.empty(n_blocks, dtype=torch.long if diffusion.kind == "ddpm_eps" else torch.float)
        eps = torch.empty(x0.shape)
        block_doc = batch.block_doc.cpu()
        tok_doc = block_doc[blocks.cpu()]
        if ctx is not None:
            s, e = torch.empty(n_blocks), torch.empty((n_ctx, x0.shape[-1]))
            ctx_doc = block_doc[lay.block[ctx].cpu()]
        for d, key in enumerate(batch.doc_keys.tolist()):
            g = torch.Generator().manual_seed(int(key))
            mine = block_doc == d
            t[mine] = diffusion.sample_t(int(mine.sum()), g)
            sel = tok_doc == d
            eps[sel] = torch.randn((int(sel.sum()), x0.shape[-1]), generator=g)
            if ctx is not None:  # after the draws above: a run without it keeps its noise
                s[mine] = torch.rand(int(mine.sum()), generator=g) * diffusion.context_noise
                here = ctx_doc == d
                e[here] = torch.randn((int(here.sum()), x0.shape[-1]), generator=g)
    t, eps = t.to(x0.device), eps.to(x0.device, x0.dtype)
    xt, target = diffusion.noise(x0, eps, t[blocks])
    patches = batch.patches.clone()
    patches[noisy] = xt
    if ctx is not None:
        s = s.to(x0.device)
        noised = diffusion.noise(patches[ctx], e.to(x0.device, x0.dtype), s[lay.block[ctx]])[0]
        if reconstruct is None:
            patches[ctx] = noised
        else:
            # a block's clean copy and its first noisy copy sit side by side, token for token, so in
            # row-major order the k-th first-copy token is the k-th clean-copy token's twin
            first = noisy & (lay.stream == 1)
            if int(first.sum()) != n_ctx:
                raise ValueError(f"{int(first.sum())} first noisy copies against {n_ctx} clean copies to reconstruct")
            inputs = batch.patches.clone()
            inputs[first] = noised
            patches[ctx] = reconstruct(inputs, s)[first[noisy]].to(x0.dtype)
    return NoisedBatch(patches, t, target)


def target_counts(batch: Batch) -> tuple[int, int]:
    """(text targets, noisy values) of a batch, known before the forward: what data-parallel ranks
    all-reduce to weigh every target equally (see `losses(denominators=...)`)."""
    text = int((batch.text_targets != IGNORE).sum())
    return text, int(batch.layout.noisy.sum()) * batch.patches.shape[-1]


def edge_contrast(x0: torch.Tensor, channels: int, patch: int) -> torch.Tensor:
    """How much each pixel of clean patches differs from its 4 neighbours in the patch, in [0, 1].

    x0: (n, channels * patch * patch) in [-1, 1], feature order (c, p, q) as `patchify` makes
    them. A pixel's contrast is its largest absolute difference, over channels and in-patch
    neighbours, halved (the largest difference in [-1, 1] is 2); both sides of an edge get it.
    Returned per feature (the pixel's value repeated over its channels), shaped like x0.
    """
    n = x0.shape[0]
    x = x0.detach().float().reshape(n, channels, patch, patch)
    dy = (x[:, :, 1:] - x[:, :, :-1]).abs().amax(1)  # (n, p-1, p): rows i and i+1
    dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().amax(1)  # (n, p, p-1): columns j and j+1
    c = torch.zeros(n, patch, patch, device=x.device)
    c[:, 1:] = torch.maximum(c[:, 1:], dy)
    c[:, :-1] = torch.maximum(c[:, :-1], dy)
    c[:, :, 1:] = torch.maximum(c[:, :, 1:], dx)
    c[:, :, :-1] = torch.maximum(c[:, :, :-1], dx)
    return (c / 2).clamp(max=1.0).unsqueeze(1).expand(n, channels, patch, patch).reshape(n, channels * patch * patch)


def losses(
    model,
    batch: Batch,
    diffusion: Diffusion,
    generator: torch.Generator | None = None,
    text_weight: float = 1.0,
    image_weight: float = 1.0,
    labels: torch.Tensor | None = None,
    denominators: tuple[float, float] | None = None,
    align_weight: float = 0.0,
    weighting: str = "none",
    edge_weight: float = 0.0,
    patch_shape: tuple[int, int] | None = None,
    self_cond: bool = False,
) -> dict[str, torch.Tensor]:
    """{'loss', 'text', 'image', 'align', 'text_count', 'image_count'}: the weighted total, each
    term's mean (float32) and how many targets each modality has (text tokens; noisy values).

    `align_weight` weighs the self-alignment term of a model with `align_layer` (REPA): 1 minus
    the cosine similarity of each noisy token's projected hidden state and its clean copy's, a
    mean over noisy tokens, reported as 'align' (0 for a model without the projector).

    A modality absent from the batch contributes 0 and reports 0. `labels` (NB,) overrides the
    batch's block labels (e.g. some dropped to the null class). `denominators` (text, image) divide
    the summed losses instead of this batch's own counts: data-parallel ranks pass the global
    counts divided by the world size, so every target weighs the same whatever rank holds it.

    `weighting` "sample" (flow only) weighs each noisy token's squared velocity error by its t²:
    the error of its clean estimate x̂0 = x_t - t·v̂. The velocity error of a block at low noise is
    its x̂0 error divided by t, so without it a few low-noise blocks can outweigh the rest.

    `edge_weight` λ > 0 weighs each value's squared error by 1 + λ·c, c the `edge_contrast` of
    its pixel in the clean patch (`patch_shape` = (channels, patch size) says how to read a
    patch): the pixels where one colour meets another, which decide a shape and are few, count
    more than flat background and object interiors. Meant for pixel-space models; the mean is
    still taken over the unweighted count.

    With `diffusion.context` "model" (and `context_noise` > 0) the clean copies of the diffusion
    blocks are the model's own clean estimates of them from a time s <= context_noise, made in a
    first forward without gradients: the later blocks learn to continue the soft, slightly wrong
    blocks the model itself draws at inference (teacher forcing's exposure bias), at the cost of
    that forward.

    `self_cond` (a model with `self_condition`): a first forward without gradients estimates every
    noisy block's clean patches, and the forward that trains reads those estimates as the
    previous step's; without it the model trains reading zero, as at a sampler's first step.
    """
    lay = batch.layout
    labels = batch.block_label if labels is None else labels

    model_context = diffusion.context == "model" and diffusion.context_noise > 0
    # both forwards read one layout: its mask and RoPE tables are built once
    plan = getattr(model, "module", model).plan(lay) if model_context or self_cond else None

    def reconstruct(patches: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            v = model(batch.tokens, patches, lay, t=s, labels=labels, plan=plan).pred
        return sample_from_velocity(v, patches[lay.noisy], s[lay.block[lay.noisy]])

    nb = noise_batch(batch, diffusion, generator, reconstruct if model_context else None)
    estimate = None
    if self_cond and lay.noisy.any():
        if diffusion.kind != "flow":
            raise ValueError("self-conditioning needs a flow model")
        with torch.no_grad():
            v = model(batch.tokens, nb.patches, lay, t=nb.t, labels=labels, plan=plan).pred
            estimate = sample_from_velocity(v, nb.patches[lay.noisy], nb.t[lay.block[lay.noisy]])
    out = model(batch.tokens, nb.patches, lay, t=nb.t, labels=labels, plan=plan, self_cond=estimate)
    zero = torch.zeros((), device=nb.patches.device)
    image_sum, image_count = zero, 0
    if weighting not in ("none", "sample") or weighting == "sample" and diffusion.kind != "flow":
        raise ValueError(f"loss.weighting must be 'none', or 'sample' for flow models, got {weighting!r}")
    if out.pred is not None:
        err = (out.pred.float() - nb.target.float()) ** 2
        if weighting == "sample":
            err = err * nb.t[lay.block[lay.noisy]].float().square().unsqueeze(-1)
        if edge_weight:
            if patch_shape is None:
                raise ValueError("edge_weight needs patch_shape (channels, patch size) to find the pixels")
            err = err * (1 + edge_weight * edge_contrast(batch.patches[lay.noisy], *patch_shape))
        image_sum = err.sum()
        image_count = nb.target.numel()
    text_sum, text_count = zero, 0
    if out.text_logits is not None:
        targets = batch.text_targets[(lay.modality == TEXT) & ~lay.noisy]
        text_count = int((targets != IGNORE).sum())
        if text_count:
            text_sum = F.cross_entropy(out.text_logits.float(), targets, ignore_index=IGNORE, reduction="sum")
    text_den, image_den = denominators or (text_count, image_count)
    text = text_sum / max(text_den, 1)
    image = image_sum / max(image_den, 1)
    loss = text_weight * text + image_weight * image
    align_sum = zero
    if out.align is not None:  # also at weight 0: the projector joins the graph, as ZeRO needs
        proj, target = out.align
        align_sum = (1 - F.cosine_similarity(proj.float(), target.float(), dim=-1)).sum()
        # per noisy token, over the same (global) count as the image loss: patch_dim values a token
        loss = loss + align_weight * align_sum * batch.patches.shape[-1] / max(image_den, 1)
    elif align_weight:
        raise ValueError("loss.align_weight > 0 needs a model with model.align_layer > 0, trained with gradients")
    return {
        "loss": loss,
        "text": (text_sum / max(text_count, 1)).detach(),
        "image": (image_sum / max(image_count, 1)).detach(),
        "align": (align_sum * batch.patches.shape[-1] / max(image_count, 1)).detach(),
        "text_count": torch.tensor(text_count),
        "image_count": torch.tensor(image_count),
    }
