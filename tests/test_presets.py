"""Preset sizes: the paper's ACDiT-B/L/XL/H parameter counts (Table 5) within 2%, built on meta."""

import pytest
import torch

from unimodal import ModelConfig, UnifiedModel
from unimodal.config import PRESETS

PAPER = {"acdit-b": 132e6, "acdit-l": 460e6, "acdit-xl": 677e6, "acdit-h": 954e6}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_parameter_counts(name):
    with torch.device("meta"):
        model = UnifiedModel(ModelConfig.from_preset(name))
    n = model.num_parameters()
    assert abs(n - PAPER[name]) / PAPER[name] < 0.02, f"{name}: {n / 1e6:.1f}M vs {PAPER[name] / 1e6:.0f}M"
    assert model.cfg.head_dim == 64 and model.cfg.num_classes == 1000 and model.cfg.patch_dim == 4


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_round_trips(name, tmp_path):
    cfg = ModelConfig.from_preset(name)
    cfg.save(tmp_path / "config.json")
    assert ModelConfig.load(tmp_path / "config.json") == cfg


def test_gradient_checkpointing_gives_same_gradients():
    from test_diffusion import make_batch

    from unimodal.diffusion import Diffusion, losses

    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        cfg = ModelConfig.from_preset("micro", grad_checkpointing=ckpt)
        model = UnifiedModel(cfg).train()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        out = losses(model, make_batch(cfg), Diffusion("flow"), torch.Generator().manual_seed(0))
        out["loss"].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_load_reports_bad_file(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text('{"dim": 64, "depht": 2}')
    with pytest.raises(KeyError, match="depht"):
        ModelConfig.load(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        ModelConfig.load(bad)


def test_zero_residual_init_starts_every_block_as_the_identity():
    """`residual_init: zero`: at initialisation the trunk returns its input embedding (every block
    the identity), and one optimizer step moves the zeroed projections off zero."""
    from test_diffusion import make_batch

    from unimodal.diffusion import Diffusion, losses

    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("micro", residual_init="zero")
    model = UnifiedModel(cfg)
    seen = {}
    model.blocks[0].register_forward_hook(lambda m, args, out: seen.update(first_in=args[0]))
    model.blocks[-1].register_forward_hook(lambda m, args, out: seen.update(last_out=out))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses(model, make_batch(cfg), Diffusion("flow"), torch.Generator().manual_seed(0))["loss"].backward()
    torch.testing.assert_close(seen["last_out"], seen["first_in"], rtol=0, atol=0)
    opt.step()
    for blk in model.blocks:
        assert blk.attn.proj.weight.abs().sum() > 0 and blk.mlp.fc2.weight.abs().sum() > 0
    assert UnifiedModel(ModelConfig.from_preset("micro")).blocks[0].attn.proj.weight.abs().sum() > 0
    # without text, the zero projections and the zero AdaLN gates would hold each other at zero
    with pytest.raises(ValueError, match="residual_init 'zero' needs a text vocabulary"):
        ModelConfig.from_preset("micro", residual_init="zero", vocab_size=0)
