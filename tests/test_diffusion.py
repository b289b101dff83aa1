"""Diffusion parameterisations against diffusers, and the per-modality losses."""

import numpy as np
import pytest
import torch

from unimodal import Document, Image, ModelConfig, Text, UnifiedModel
from unimodal.diffusion import Diffusion, edge_contrast, losses, noise_batch
from unimodal.layout import encode_document, pack


def test_ddpm_noise_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler()  # the paper's schedule: linear beta 1e-4..0.02, 1000 steps
    d = Diffusion("ddpm_eps")
    x0, eps = torch.randn(64, 12), torch.randn(64, 12)
    t = torch.randint(0, 1000, (64,))
    xt, target = d.noise(x0, eps, t)
    torch.testing.assert_close(xt, sched.add_noise(x0, eps, t), rtol=1e-6, atol=1e-6)
    assert torch.equal(target, eps)


def test_flow_noise_and_velocity():
    d = Diffusion("flow")
    x0, eps = torch.randn(8, 4), torch.randn(8, 4)
    t = torch.rand(8)
    xt, v = d.noise(x0, eps, t)
    torch.testing.assert_close(xt, (1 - t[:, None]) * x0 + t[:, None] * eps)
    torch.testing.assert_close(v, eps - x0)
    # integrating the exact velocity from t to 0 returns x0
    torch.testing.assert_close(xt - t[:, None] * v, x0)


def test_time_mean_anneals_linearly_over_the_run():
    """loss.time_mean_end: the mean moves from time_mean at the first step to time_mean_end at the
    last; unset, it stays."""
    from unimodal.train.config import LossConfig

    fixed = LossConfig(time_mean=1.5)
    assert [fixed.time_mean_at(s, 100) for s in (0, 50, 99)] == [1.5, 1.5, 1.5]
    moving = LossConfig(time_mean=1.5, time_mean_end=-0.5)
    got = [moving.time_mean_at(s, 101) for s in (0, 25, 50, 100, 200)]
    assert got == pytest.approx([1.5, 1.0, 0.5, -0.5, -0.5])


def test_uniform_fraction_mixes_uniform_times_into_the_logit_normal():
    """loss.time_uniform: the empirical CDF of the training times is (1 - f) x the logit-normal's
    plus f x the uniform's; off (f = 0) the draws are exactly the plain logit-normal's."""
    from math import erf, log, sqrt

    plain = Diffusion("flow", 1.5, 1.0).sample_t(1000, torch.Generator().manual_seed(0))
    off = Diffusion("flow", 1.5, 1.0, uniform_fraction=0.0).sample_t(1000, torch.Generator().manual_seed(0))
    assert torch.equal(plain, off)
    f, n = 0.25, 200_000
    t = Diffusion("flow", 1.5, 1.0, uniform_fraction=f).sample_t(n, torch.Generator().manual_seed(0))
    for x in (0.05, 0.2, 0.4, 0.6, 0.8, 0.95):
        logit_normal = 0.5 * (1 + erf((log(x / (1 - x)) - 1.5) / sqrt(2)))
        assert abs((t < x).float().mean().item() - ((1 - f) * logit_normal + f * x)) < 0.004, x
    with pytest.raises(ValueError, match="uniform_fraction"):
        Diffusion("flow", uniform_fraction=1.5)


def returned_and_raw_head(cfg: ModelConfig) -> tuple[torch.Tensor, ...]:
    """A perturbed model's returned prediction and its head's raw output at the noisy tokens of one
    text + image document, with their x_t and t."""
    model = UnifiedModel(cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    doc = Document([Text(ids=[1, 2]), Image(np.zeros((8, 8, 3), np.uint8))])
    batch = pack([encode_document(doc, cfg.patch_size, cfg.block_spec)], cfg.patch_dim)
    nb = noise_batch(batch, Diffusion("flow"), torch.Generator().manual_seed(1))
    noisy = batch.layout.noisy
    with torch.no_grad():
        out = model(batch.tokens, nb.patches, batch.layout, t=nb.t)
        _, head = model.adaln_tables(nb.t, None)
        raw = model.final_layer(out.hidden[noisy], head[batch.layout.block[noisy]])
    return out.pred, raw, nb.patches[noisy], nb.t[batch.layout.block[noisy]]


def test_sample_prediction_returns_the_velocity_of_its_clean_estimate():
    """A model predicting x̂0 returns (x_t - x̂0) / t: exactly ε - x0 when x̂0 = x0 (t >= 0.05), and
    its head's raw output is that x̂0; it is refused with ε-prediction."""
    from unimodal.model import SAMPLE_MIN_T, velocity_from_sample

    x0, eps = torch.randn(6, 12), torch.randn(6, 12)
    t = torch.tensor([0.05, 0.1, 0.3, 0.5, 0.9, 1.0])
    xt, v = Diffusion("flow").noise(x0, eps, t)
    torch.testing.assert_close(velocity_from_sample(x0, xt, t), v, rtol=1e-5, atol=1e-5)
    low = torch.tensor([0.0, 0.01])
    torch.testing.assert_close(velocity_from_sample(x0[:2], xt[:2], low), (xt[:2] - x0[:2]) / SAMPLE_MIN_T)

    pred, x_hat, xt, tok_t = returned_and_raw_head(ModelConfig.from_preset("micro", num_classes=0, prediction="sample"))
    torch.testing.assert_close(pred, velocity_from_sample(x_hat, xt, tok_t))
    with pytest.raises(ValueError, match="prediction"):
        ModelConfig.from_preset("micro", diffusion="ddpm_eps", prediction="sample")


def test_preconditioning_leaves_a_unit_variance_target_uncorrelated_with_x_t():
    """c_skip·x_t is the least-squares linear estimate of x0 on the flow path, and c_out the spread
    of the rest: by Monte Carlo over x0 ~ N(0, σ²), F's target (x0 - c_skip·x_t) / c_out has unit
    variance and no correlation with x_t, at every t; x̂0 tends to x_t at t -> 0 and to c_out·F at 1."""
    from unimodal.model import preconditioning

    g = torch.Generator().manual_seed(0)
    for sigma in (0.3, 0.5, 1.0):
        x0 = sigma * torch.randn(400_000, generator=g)
        eps = torch.randn(400_000, generator=g)
        for t in (0.05, 0.2, 0.5, 0.8, 0.97):
            xt = (1 - t) * x0 + t * eps
            c_skip, c_out = preconditioning(torch.tensor(t), sigma)
            target = (x0 - c_skip * xt) / c_out
            assert abs(target.var().item() - 1) < 0.01, (sigma, t)
            assert abs(torch.corrcoef(torch.stack([target, xt]))[0, 1].item()) < 0.01, (sigma, t)
    c_skip, c_out = preconditioning(torch.tensor([0.0, 1.0]), 0.5)
    torch.testing.assert_close(c_skip, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(c_out, torch.tensor([0.0, 0.5]))


def test_preconditioned_prediction_returns_the_velocity_of_its_clean_estimate():
    """prediction "preconditioned": the model returns (x_t - x̂0) / t for x̂0 = c_skip·x_t + c_out·F,
    F its head's raw output, computed without dividing by t (finite at t = 0, equal to the direct
    formula elsewhere); refused with ε-prediction."""
    from unimodal.model import preconditioning, velocity_from_preconditioned

    f, xt = torch.randn(5, 12), torch.randn(5, 12)
    t = torch.tensor([0.02, 0.1, 0.5, 0.9, 1.0])
    c_skip, c_out = preconditioning(t, 0.4)
    x_hat = c_skip[:, None] * xt + c_out[:, None] * f
    torch.testing.assert_close(velocity_from_preconditioned(f, xt, t, 0.4), (xt - x_hat) / t[:, None])
    assert torch.isfinite(velocity_from_preconditioned(f, xt, torch.zeros(5), 0.4)).all()

    cfg = ModelConfig.from_preset("micro", num_classes=0, prediction="preconditioned", sigma_data=0.4)
    pred, raw, xt, tok_t = returned_and_raw_head(cfg)
    c_skip, c_out = preconditioning(tok_t, 0.4)
    x_hat = c_skip[:, None] * xt + c_out[:, None] * raw
    torch.testing.assert_close(pred, (xt - x_hat) / tok_t[:, None], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="prediction"):
        ModelConfig.from_preset("micro", diffusion="ddpm_eps", prediction="preconditioned")
    with pytest.raises(ValueError, match="sigma_data"):
        ModelConfig.from_preset("micro", prediction="preconditioned", sigma_data=0.0)


def test_timestep_sampling():
    g = torch.Generator().manual_seed(0)
    t = Diffusion("ddpm_eps").sample_t(20000, g)
    assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 999
    assert abs(t.float().mean().item() - 499.5) < 10
    f = Diffusion("flow").sample_t(20000, g)
    assert 0 < f.min() and f.max() < 1
    assert abs(f.mean().item() - 0.5) < 0.01  # logit-normal(0, 1) is symmetric around 0.5
    assert abs(torch.logit(f).std().item() - 1.0) < 0.03
    high = Diffusion("flow", 1.0, 0.5).sample_t(20000, g)  # loss.time_mean / time_std: more high-noise training
    assert abs(torch.logit(high).mean().item() - 1.0) < 0.02 and abs(torch.logit(high).std().item() - 0.5) < 0.02


def make_batch(cfg):
    rng = np.random.default_rng(0)
    docs = [
        Document([Text(ids=[1, 2, 3]), Image(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)), Text(ids=[4, 5])]),
        Document([Image(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))]),
    ]
    return pack([encode_document(d, cfg.patch_size, cfg.block_spec) for d in docs], cfg.patch_dim)


def test_independent_timestep_per_block():
    cfg = ModelConfig.from_preset("micro")
    batch = make_batch(cfg)
    nb = noise_batch(batch, Diffusion("flow"), torch.Generator().manual_seed(0))
    lay = batch.layout
    assert nb.t.shape == (batch.block_label.numel(),) and nb.t.unique().numel() == nb.t.numel()
    # clean copies keep x0, noisy copies change, and the target is eps - x0 at noisy tokens
    assert torch.equal(nb.patches[~lay.noisy], batch.patches[~lay.noisy])
    assert not torch.allclose(nb.patches[lay.noisy], batch.patches[lay.noisy])
    x0 = batch.patches[lay.noisy]
    tt = nb.t[lay.block[lay.noisy]][:, None]
    eps = nb.target + x0
    torch.testing.assert_close(nb.patches[lay.noisy], (1 - tt) * x0 + tt * eps)


@pytest.mark.parametrize("keys", [None, [11, 12, 13]])
def test_context_noise_touches_only_the_clean_copies_of_diffusion_blocks(keys):
    """context_noise: the clean copies of blocks with a noisy copy become (1 - s)·x0 + s·e with one
    s <= context_noise per block; a context-only image and text stay exact, and the noisy copies,
    t and targets are those of a run without it (its draws come after theirs)."""
    from unimodal.layout import VisualSegment

    cfg = ModelConfig.from_preset("micro")
    rng = np.random.default_rng(0)
    enc = [
        encode_document(
            Document([Text(ids=[1, 2]), Image(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))]),
            cfg.patch_size,
            cfg.block_spec,
        )
        for _ in range(3)
    ]
    enc[1].segments = [  # the captioning case: the image is context only
        VisualSegment(x.tokens, x.pos, x.grid, noisy=False) if isinstance(x, VisualSegment) else x
        for x in enc[1].segments
    ]
    batch = pack(enc, cfg.patch_dim, row_len=200)
    if keys is not None:
        batch.doc_keys = torch.tensor(keys)
    lay = batch.layout
    plain = noise_batch(batch, Diffusion("flow"), torch.Generator().manual_seed(0))
    noised = noise_batch(batch, Diffusion("flow", context_noise=0.3), torch.Generator().manual_seed(0))
    assert torch.equal(plain.t, noised.t) and torch.equal(plain.target, noised.target)
    assert torch.equal(plain.patches[lay.noisy], noised.patches[lay.noisy])
    clean_visual = ~lay.noisy & (lay.block >= 0)
    context_only = clean_visual & (lay.doc == 1)
    touched = clean_visual & (lay.doc != 1)
    assert torch.equal(noised.patches[~touched], plain.patches[~touched])  # noisy copies, text, context-only
    assert context_only.any() and touched.any()
    x0, got = batch.patches[touched], noised.patches[touched]
    assert (got - x0).abs().amax(-1).min() > 0
    if keys is None:  # the documented order: t, ε, then one s per block and e per context token
        g = torch.Generator().manual_seed(0)
        Diffusion("flow").sample_t(batch.block_label.numel(), g)
        torch.randn(plain.target.shape, generator=g)
        s = torch.rand(batch.block_label.numel(), generator=g) * 0.3
        e = torch.randn(x0.shape, generator=g)
        s_tok = s[lay.block[touched]][:, None]
        torch.testing.assert_close(got, (1 - s_tok) * x0 + s_tok * e)
    with pytest.raises(ValueError, match="context_noise"):
        Diffusion("ddpm_eps", context_noise=0.1)


def test_model_context_is_the_models_own_estimate_of_each_clean_copy():
    """context "model": each clean copy of a diffusion block becomes x̂0 = x_s - s·v̂, the model's
    estimate from its block's clean copy noised to s (the draws of context "noise"), read at the
    block's noisy copy; found here through `clean_twins` and a forward of our own. Context-only
    images, text, noisy copies, t and targets are those of a run without it."""
    from unimodal.layout import VisualSegment, clean_twins

    cfg = ModelConfig.from_preset("micro")
    torch.manual_seed(0)
    model = UnifiedModel(cfg).eval()
    rng = np.random.default_rng(0)
    enc = [
        encode_document(
            Document([Text(ids=[1, 2]), Image(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)), Text(ids=[3])]),
            cfg.patch_size,
            cfg.block_spec,
        )
        for _ in range(3)
    ]
    enc[1].segments = [
        VisualSegment(x.tokens, x.pos, x.grid, noisy=False) if isinstance(x, VisualSegment) else x
        for x in enc[1].segments
    ]
    batch = pack(enc, cfg.patch_dim, row_len=200)
    lay = batch.layout
    plain = noise_batch(batch, Diffusion("flow"), torch.Generator().manual_seed(0))
    noised = noise_batch(batch, Diffusion("flow", context_noise=0.3), torch.Generator().manual_seed(0))
    seen = []

    def reconstruct(patches, s):
        seen.append(s)
        v = model(batch.tokens, patches, lay, t=s, labels=batch.block_label).pred
        return patches[lay.noisy] - s[lay.block[lay.noisy]][:, None] * v

    model_context = Diffusion("flow", context_noise=0.3, context="model")
    with torch.no_grad():
        got = noise_batch(batch, model_context, torch.Generator().manual_seed(0), reconstruct)
        rows, cols = clean_twins(lay, cfg.block_spec.block_len(cfg.grid))
        inputs = batch.patches.clone()
        inputs[lay.noisy] = noised.patches[rows, cols]
        s = seen[0]
        # the model reads each block at its own s, drawn after t and ε as context "noise" draws it
        g = torch.Generator().manual_seed(0)
        Diffusion("flow").sample_t(batch.block_label.numel(), g)
        torch.randn(plain.target.shape, generator=g)
        assert torch.equal(s, torch.rand(batch.block_label.numel(), generator=g) * 0.3)
        v = model(batch.tokens, inputs, lay, t=s, labels=batch.block_label).pred
        want = plain.patches.clone()
        want[rows, cols] = inputs[lay.noisy] - s[lay.block[lay.noisy]][:, None] * v
    assert torch.equal(got.t, plain.t) and torch.equal(got.target, plain.target)
    torch.testing.assert_close(got.patches, want)
    touched = ~lay.noisy & (lay.block >= 0) & (lay.doc != 1)
    assert torch.equal(got.patches[~touched], plain.patches[~touched])
    assert (got.patches[touched] - batch.patches[touched]).abs().amax(-1).min() > 0
    # the losses run it with the model itself: their image term is the error on those inputs
    with torch.no_grad():
        out = losses(model, batch, model_context, torch.Generator().manual_seed(0))
        pred = model(batch.tokens, got.patches, lay, t=got.t, labels=batch.block_label).pred
    torch.testing.assert_close(out["image"], ((pred - got.target) ** 2).mean())
    with pytest.raises(ValueError, match="context"):
        Diffusion("flow", context_noise=0.3, context="samples")


@pytest.mark.parametrize("kind", ["flow", "ddpm_eps"])
def test_losses_per_modality(kind):
    cfg = ModelConfig.from_preset("micro", diffusion=kind)
    model = UnifiedModel(cfg)
    batch = make_batch(cfg)
    out = losses(model, batch, Diffusion(kind), torch.Generator().manual_seed(0), text_weight=0.5, image_weight=2.0)
    assert out["loss"].dtype == torch.float32
    torch.testing.assert_close(out["loss"].detach(), 0.5 * out["text"] + 2.0 * out["image"])
    # independent recomputation: text CE over next-token pairs, image MSE of a zero-init head = E[target^2]
    with torch.no_grad():
        nb = noise_batch(batch, Diffusion(kind), torch.Generator().manual_seed(0))
        o = model(batch.tokens, nb.patches, batch.layout, t=nb.t, labels=batch.block_label)
    pairs = [(0, 2), (1, 3), (3, 5)]  # (row among clean text tokens 1 2 3 4 5, next id): 1->2, 2->3, 4->5
    ce = np.mean([-torch.log_softmax(o.text_logits[r], -1)[nxt].item() for r, nxt in pairs])
    assert abs(out["text"].item() - ce) < 1e-5
    assert abs(out["image"].item() - nb.target.pow(2).mean().item()) < 1e-5
    out["loss"].backward()
    assert model.final_layer.linear.weight.grad.abs().sum() > 0
    assert model.tok_embedder.weight.grad.abs().sum() > 0


def perturbed_micro():
    """A micro flow model with its zero-initialised heads perturbed (so predictions are not 0), its
    config and a batch."""
    cfg = ModelConfig.from_preset("micro", num_classes=0)
    model = UnifiedModel(cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return cfg, model, make_batch(cfg)


def test_sample_weighting_is_the_clean_estimates_error():
    """weighting "sample": the image loss is the mean squared error of x̂0 = x_t - t·v̂ (each
    velocity error times its block's t²), recomputed here from the raw predictions; refused for
    ε-models."""
    cfg, model, batch = perturbed_micro()
    out = losses(model, batch, Diffusion("flow"), torch.Generator().manual_seed(0), weighting="sample")
    with torch.no_grad():
        nb = noise_batch(batch, Diffusion("flow"), torch.Generator().manual_seed(0))
        v = model(batch.tokens, nb.patches, batch.layout, t=nb.t).pred
    lay = batch.layout
    t = nb.t[lay.block[lay.noisy]][:, None]
    xt, x0 = nb.patches[lay.noisy], batch.patches[lay.noisy]
    torch.testing.assert_close(out["image"], ((xt - t * v) - x0).pow(2).mean(), rtol=1e-5, atol=1e-6)
    eps_cfg = ModelConfig.from_preset("micro", diffusion="ddpm_eps")
    with pytest.raises(ValueError, match="weighting"):
        losses(UnifiedModel(eps_cfg), make_batch(eps_cfg), Diffusion("ddpm_eps"), weighting="sample")


def test_edge_contrast_marks_both_sides_of_an_outline():
    """A red square on black in a 6-pixel patch: the square's outline and the ring of background
    around it get the contrast of red against black, halved; everything farther away gets 0.
    Checked against a per-pixel loop over the 4-neighbours."""
    img = -torch.ones(3, 6, 6)
    red = torch.tensor([0.7, -0.8, -0.8])
    img[:, 1:4, 2:5] = red[:, None, None]
    got = edge_contrast(img.reshape(1, -1), 3, 6).reshape(3, 6, 6)
    want = torch.zeros(6, 6)
    for i in range(6):
        for j in range(6):
            for u, v in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
                if 0 <= u < 6 and 0 <= v < 6:
                    want[i, j] = max(want[i, j], (img[:, i, j] - img[:, u, v]).abs().max() / 2)
    for c in range(3):
        torch.testing.assert_close(got[c], want)
    assert got[0, 2, 3] == 0 and got[0, 5, 0] == 0  # interior, far background
    assert abs(got[0, 1, 2].item() - 0.85) < 1e-6 and got[0, 0, 2] == got[0, 1, 2]  # outline and ring
    assert edge_contrast(torch.zeros(0, 3 * 36), 3, 6).shape == (0, 3 * 36)  # a rank with no noisy tokens


def test_edge_weight_weighs_each_error_by_its_pixels_contrast():
    """edge_weight λ: the image loss is the mean of (1 + λ·contrast)·error², recomputed from the raw
    predictions; λ = 0 leaves the loss as it was, and a model without the patch shape is refused."""
    cfg, model, batch = perturbed_micro()
    shape = (cfg.channels, cfg.patch_size)
    out = losses(model, batch, Diffusion("flow"), torch.Generator().manual_seed(0), edge_weight=3.0, patch_shape=shape)
    with torch.no_grad():
        nb = noise_batch(batch, Diffusion("flow"), torch.Generator().manual_seed(0))
        v = model(batch.tokens, nb.patches, batch.layout, t=nb.t).pred
    x0 = batch.patches[batch.layout.noisy]
    w = 1 + 3.0 * edge_contrast(x0, *shape)
    assert w.max() > 1  # the batch has edges to weigh
    torch.testing.assert_close(out["image"], (w * (v - nb.target).pow(2)).mean(), rtol=1e-5, atol=1e-6)
    plain = losses(model, batch, Diffusion("flow"), torch.Generator().manual_seed(0))
    zero = losses(model, batch, Diffusion("flow"), torch.Generator().manual_seed(0), edge_weight=0.0, patch_shape=shape)
    torch.testing.assert_close(zero["image"], plain["image"])
    with pytest.raises(ValueError, match="patch_shape"):
        losses(model, batch, Diffusion("flow"), edge_weight=1.0)


def test_losses_without_text_targets_are_finite():
    cfg = ModelConfig.from_preset("micro")
    model = UnifiedModel(cfg)
    rng = np.random.default_rng(0)
    batch = pack(
        [encode_document(Document([Image(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))]), 2, cfg.block_spec)],
        cfg.patch_dim,
    )
    out = losses(model, batch, Diffusion("flow"), torch.Generator().manual_seed(0))
    assert out["text"].item() == 0.0 and torch.isfinite(out["loss"])


def test_batch_without_noisy_tokens_gives_every_weight_a_gradient():
    """A captioning-only batch (its image is context, no noisy copy) still puts every parameter in
    the graph, with zero gradients for the diffusion-only ones: ZeRO reduces gradients in an order
    every data-parallel rank must share."""
    from unimodal.layout import VisualSegment

    cfg = ModelConfig.from_preset("micro", vocab_size=16)
    model = UnifiedModel(cfg)
    enc = encode_document(Document([Image(np.zeros((8, 8, 3), np.uint8)), Text(ids=[3, 4, 5])]), 2, cfg.block_spec)
    enc.segments = [
        VisualSegment(s.tokens, s.pos, s.grid, noisy=False) if isinstance(s, VisualSegment) else s for s in enc.segments
    ]
    batch = pack([enc], cfg.patch_dim)
    assert not batch.layout.noisy.any()
    out = losses(model, batch, Diffusion("flow"), torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert out["image"].item() == 0.0 and out["text"].item() > 0
    assert all(p.grad is not None for p in model.parameters())
    assert float(model.final_layer.linear.weight.grad.abs().sum()) == 0.0


def test_self_conditioning_trains_reading_a_first_forwards_estimate():
    """`losses(self_cond=True)`: the forward that trains reads x̂0 = x_t - t·v̂ of a first forward
    (same noise, no estimate) at every noisy token, recomputed here by hand; the estimate changes
    the loss, and the projection that reads it gets a gradient only then (zero, but present, as
    ZeRO needs, without it). Refused for models without the option, and for ε-models."""
    cfg = ModelConfig.from_preset("micro", num_classes=0, self_condition=True)
    model = UnifiedModel(cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    batch = make_batch(cfg)
    lay = batch.layout
    flow = Diffusion("flow")
    out = losses(model, batch, flow, torch.Generator().manual_seed(0), self_cond=True)
    out["loss"].backward()
    assert model.sc_embedder.weight.grad.abs().sum() > 0
    with torch.no_grad():
        nb = noise_batch(batch, flow, torch.Generator().manual_seed(0))
        t = nb.t[lay.block[lay.noisy]][:, None]
        v = model(batch.tokens, nb.patches, lay, t=nb.t).pred
        pred = model(batch.tokens, nb.patches, lay, t=nb.t, self_cond=nb.patches[lay.noisy] - t * v).pred
        plain = model(batch.tokens, nb.patches, lay, t=nb.t).pred
    torch.testing.assert_close(out["image"], ((pred - nb.target) ** 2).mean())
    assert abs(out["image"] - ((plain - nb.target) ** 2).mean()) > 1e-4
    model.zero_grad()
    out = losses(model, batch, flow, torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert model.sc_embedder.weight.grad is not None and model.sc_embedder.weight.grad.abs().sum() == 0
    torch.testing.assert_close(out["image"], ((plain - nb.target) ** 2).mean())
    with pytest.raises(ValueError, match="without model.self_condition"):
        UnifiedModel(ModelConfig.from_preset("micro"))(batch.tokens, nb.patches, lay, t=nb.t, self_cond=v)
    with pytest.raises(ValueError, match="self_condition needs diffusion 'flow'"):
        ModelConfig.from_preset("micro", diffusion="ddpm_eps", self_condition=True)


def test_bf16_autocast_keeps_losses_fp32():
    cfg = ModelConfig.from_preset("micro")
    model = UnifiedModel(cfg)
    batch = make_batch(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = losses(model, batch, Diffusion("flow"), torch.Generator().manual_seed(0))
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("image_first_diffusion", [True, False])
def test_data_parallel_shards_sum_to_the_global_gradient(image_first_diffusion):
    """Two ranks' halves of a global batch, each loss divided by the global target counts, give
    the one-process gradient (float32), also when a shard holds only captioning documents."""
    from unimodal.data.pipeline import batch_stream
    from unimodal.diffusion import target_counts
    from unimodal.train.config import load_config
    from unimodal.train.trainer import build_model_config, load_tokenizer

    base = ["model.preset=micro", "model.image_size=16", "model.patch_size=4", "model.block_size=2"]
    base += ["data.collate.pack_rows=null", f"data.collate.image_first_diffusion={image_first_diffusion}"]
    one, half = load_config(None, [*base, "data.batch_size=4"]), load_config(None, [*base, "data.batch_size=2"])
    tok = load_tokenizer(one.tokenizer, 0)
    mc = build_model_config(one, tok)
    torch.manual_seed(0)
    model = UnifiedModel(mc)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    diffusion = Diffusion(mc.diffusion)
    whole = batch_stream(one.data, tok, mc)
    ranks = [batch_stream(half.data, tok, mc, r, 2) for r in (0, 1)]
    for _ in range(3):
        model.zero_grad()
        losses(model, next(whole), diffusion)["loss"].backward()
        expect = {n: p.grad.clone() for n, p in model.named_parameters()}
        shards = [next(s) for s in ranks]
        counts = [sum(target_counts(b)[i] for b in shards) / 2 for i in (0, 1)]
        model.zero_grad()
        for b in shards:  # DeepSpeed averages the ranks' gradients
            (losses(model, b, diffusion, denominators=tuple(counts))["loss"] / 2).backward()
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.grad, expect[n], rtol=1e-4, atol=1e-6, msg=n)


def test_noisy_copies_equal_separate_one_copy_forwards():
    """A batch with 2 noisy copies per block predicts, for each copy, exactly what a one-copy batch
    predicts given that copy's x_t and t: the copies share the clean pass and nothing else."""
    cfg = ModelConfig.from_preset("micro")
    torch.manual_seed(0)
    model = UnifiedModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) * 0.3)
    model.eval()
    rng = np.random.default_rng(0)
    docs = [
        Document([Text(ids=[1, 2, 3]), Image(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)), Text(ids=[4, 5])]),
        Document([Image(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))], label=2),
    ]
    enc = [encode_document(d, cfg.patch_size, cfg.block_spec) for d in docs]
    two = pack(enc, cfg.patch_dim, noisy_copies=2)
    nb = noise_batch(two, Diffusion("flow"), torch.Generator().manual_seed(1))
    with torch.no_grad():
        pred2 = model(two.tokens, nb.patches, two.layout, t=nb.t, labels=two.block_label, backend="dense").pred
    stream_of_pred = two.layout.stream[two.layout.noisy]
    one = pack(enc, cfg.patch_dim)
    n = one.block_label.numel()
    assert two.block_label.numel() == 2 * n
    for c in (1, 2):
        patches, t = one.patches.clone(), torch.full((n,), float("nan"))
        for r in range(one.layout.shape[0]):
            mine, theirs = one.layout.noisy[r], two.layout.stream[r] == c
            patches[r][mine] = nb.patches[r][theirs]
            t[one.layout.block[r][mine]] = nb.t[two.layout.block[r][theirs]]
        assert not t.isnan().any()
        with torch.no_grad():
            pred1 = model(one.tokens, patches, one.layout, t=t, labels=one.block_label, backend="dense").pred
        torch.testing.assert_close(pred2[stream_of_pred == c], pred1, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(pred2[stream_of_pred == 1], pred2[stream_of_pred == 2])
