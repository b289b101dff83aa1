"""Self-alignment (REPA with the model's clean stream as encoder): the clean twins of noisy tokens,
the loss term against an independent recomputation, and where its gradient goes."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unimodal import Document, Image, ModelConfig, Text, UnifiedModel
from unimodal.diffusion import Diffusion, losses, noise_batch
from unimodal.layout import clean_twins, encode_document, pack


def packed(cfg: ModelConfig, copies: int = 1):
    """Two documents packed into one row (text, image, text; image only), `copies` noisy copies."""
    rng = np.random.default_rng(0)
    docs = [
        Document([Text(ids=[1, 2, 3]), Image(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)), Text(ids=[4, 5])]),
        Document([Image(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))]),
    ]
    enc = [encode_document(d, cfg.patch_size, cfg.block_spec) for d in docs]
    return pack(enc, cfg.patch_dim, row_len=128, noisy_copies=copies)


@pytest.mark.parametrize("copies", [1, 2])
def test_clean_twins_follow_the_dense_rule(copies):
    """Each noisy token's twin is the one clean token of its document and unit at its position."""
    cfg = ModelConfig.from_preset("micro")
    lay = packed(cfg, copies).layout
    rows, cols = clean_twins(lay, cfg.block_spec.block_len(cfg.grid))
    noisy = lay.noisy.nonzero().tolist()
    assert len(noisy) == len(rows) > 0
    for (r, c), tr, tc in zip(noisy, rows.tolist(), cols.tolist(), strict=True):
        same = (
            (lay.doc[r] == lay.doc[r, c])
            & (lay.unit[r] == lay.unit[r, c])
            & (lay.stream[r] == 0)
            & (lay.pos[r] == lay.pos[r, c]).all(-1)
        )
        assert same.nonzero().flatten().tolist() == [tc] and tr == r


def test_align_term_equals_its_recomputation_from_partial_forwards():
    """The loss adds weight x mean(1 - cos(proj(h_noisy after align_layer), h_clean twin entering
    the last layer)), recomputed here from `depth=` forwards and the dense twin rule."""
    cfg = ModelConfig.from_preset("micro", depth=3, align_layer=1)
    torch.manual_seed(0)
    model = UnifiedModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    batch = packed(cfg, copies=2)
    diffusion = Diffusion("flow")
    plain = losses(model, batch, diffusion, torch.Generator().manual_seed(0))
    out = losses(model, batch, diffusion, torch.Generator().manual_seed(0), align_weight=0.5)
    nb = noise_batch(batch, diffusion, torch.Generator().manual_seed(0))
    lay = batch.layout
    args = (batch.tokens, nb.patches, lay)
    with torch.no_grad():
        student = model(*args, t=nb.t, labels=batch.block_label, depth=cfg.align_layer).hidden
        target = model(*args, t=nb.t, labels=batch.block_label, depth=cfg.depth - 1).hidden
        terms = []
        for r, c in lay.noisy.nonzero().tolist():
            twin = (lay.doc[r] == lay.doc[r, c]) & (lay.stream[r] == 0) & (lay.pos[r] == lay.pos[r, c]).all(-1)
            proj = model.align_proj(student[r, c])
            terms.append(1 - F.cosine_similarity(proj, target[r, twin.nonzero().item()], dim=0))
        expect = torch.stack(terms).mean()
    torch.testing.assert_close(out["align"], expect, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["loss"].detach(), plain["loss"].detach() + 0.5 * expect, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(plain["align"], expect, rtol=1e-4, atol=1e-5)  # reported, not added, at weight 0


def test_align_gradient_reaches_the_student_and_not_the_target():
    """The target is detached: the align term alone gives the projector and the layers up to
    align_layer a gradient, and none to the layers after it, the heads or the text embedding's
    path through the target."""
    cfg = ModelConfig.from_preset("micro", depth=3, align_layer=1, vocab_size=16)
    torch.manual_seed(0)
    model = UnifiedModel(cfg)
    with torch.no_grad():  # off the zero-initialised AdaLN gates, so that every path carries gradient
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    batch = packed(cfg)
    out = model(batch.tokens, batch.patches, batch.layout, t=torch.rand(batch.block_label.numel()))
    proj, target = out.align
    assert proj.requires_grad and not target.requires_grad
    assert proj.shape == target.shape == (int(batch.layout.noisy.sum()), cfg.dim)
    (1 - F.cosine_similarity(proj, target, dim=-1)).mean().backward()
    assert model.align_proj[0].weight.grad.abs().sum() > 0
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.blocks[1:].parameters())
    assert model.final_layer.linear.weight.grad is None


def test_align_is_off_at_inference_and_without_a_layer():
    cfg = ModelConfig.from_preset("micro", align_layer=2)
    model = UnifiedModel(cfg)
    batch = packed(cfg)
    t = torch.rand(batch.block_label.numel())
    with torch.no_grad():
        assert model(batch.tokens, batch.patches, batch.layout, t=t).align is None
    plain = UnifiedModel(ModelConfig.from_preset("micro"))
    assert plain.align_proj is None and plain(batch.tokens, batch.patches, batch.layout, t=t).align is None
    with pytest.raises(ValueError, match="align_layer"):
        losses(plain, batch, Diffusion("flow"), align_weight=1.0)


def test_align_config_is_validated_on_load():
    from unimodal.train.config import load_config

    with pytest.raises(ValueError, match="align_layer"):
        ModelConfig.from_preset("micro", align_layer=9)
    with pytest.raises(ValueError, match="config.loss.align_weight"):
        load_config(None, ["loss.align_weight=0.5"])
    with pytest.raises(ValueError, match="loss.align_weight"):
        load_config(None, ["loss.align_weight=-1", "model.align_layer=2"])
    assert load_config(None, ["loss.align_weight=0.5", "model.align_layer=2"]).loss.align_weight == 0.5
