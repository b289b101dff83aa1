"""Parity with the official ACDiT code: every recorded output of every fixture, to 1e-4."""

import json

import pytest
import torch
from conftest import fixtures_dir
from safetensors import safe_open

from unimodal.compat.acdit import from_official, official_to_config
from unimodal.layout import EncodedDoc, VisualSegment, pack
from unimodal.patches import block_order, grid_positions

FIXTURES = sorted(fixtures_dir().glob("acdit_official_*.safetensors"))


def load(path):
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    params = {k.removeprefix("param."): v for k, v in tensors.items() if k.startswith("param.")}
    return json.loads(meta["official_config"]), params, tensors


def block_positions(cfg):
    """(N, B, 3) positions of the official token order, derived from our block spec."""
    grid = cfg.grid
    order = block_order(grid, cfg.block_spec)
    n = cfg.block_spec.num_blocks(grid)
    return grid_positions(grid)[order].reshape(n, -1, 3), grid


def test_fixtures_present():
    assert FIXTURES, f"no acdit_official_*.safetensors in {fixtures_dir()} (set UNIMODAL_FIXTURES)"


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_training_forward_matches_official(path):
    official, params, x = load(path)
    model = from_official(params, official).eval()
    cfg = model.cfg
    pos, grid = block_positions(cfg)
    clean, noised, t, y = x["in.clean"], x["in.noised"], x["in.t"], x["in.y"]
    docs = [EncodedDoc([VisualSegment(clean[i], pos, grid)], label=int(y[i])) for i in range(clean.shape[0])]
    batch = pack(docs, cfg.patch_dim)
    lay = batch.layout
    patches = batch.patches.clone()
    patches[lay.noisy] = noised.reshape(-1, cfg.patch_dim)  # our rows: c0 n0 c1 n1 ...; blocks in order
    with torch.no_grad():
        out = model(batch.tokens, patches, lay, t=t.reshape(-1), labels=batch.block_label, backend="dense")
    expected = x["out.train_out"]
    got = out.pred.reshape(expected.shape)
    assert (got - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_cached_inference_matches_official(path):
    """Block 0 alone; block 1's first step fused with committing clean block 0; block 1's next step."""
    official, params, x = load(path)
    model = from_official(params, official).eval()
    cfg = model.cfg
    pos, grid = block_positions(cfg)
    n, b = x["in.clean"].shape[0], pos.shape[1]
    y = x["in.y"]
    cache = model.new_cache(n, max_len=pos.shape[0] * b)
    # The full two-block document gives the step layouts: unit 0 = block 0, unit 1 = block 1.
    docs = [EncodedDoc([VisualSegment(x["in.clean"][i], pos, grid)], label=int(y[i])) for i in range(n)]
    full = pack(docs, cfg.patch_dim)
    lay = full.layout
    idx = torch.arange(lay.shape[1]).expand(n, -1)
    clean0, noisy0, noisy1 = idx[:, 0:b], idx[:, b : 2 * b], idx[:, 3 * b : 4 * b]
    labels = full.block_label

    def step(token_idx, patches, t, commit=None):
        sub = lay.index(token_idx)
        nb = full.block_label.numel()
        t_blocks = torch.full((nb,), int(t))
        with torch.no_grad():
            out = model(
                full.tokens.gather(1, token_idx), patches, sub, t=t_blocks, labels=labels, cache=cache, commit=commit
            )
        return out.pred.reshape(n, b, -1)

    it = x["in.infer_t"]
    got0 = step(noisy0, x["in.infer_noise0"].reshape(n, b, -1), it[0])
    assert (got0 - x["out.infer_block0"]).abs().max().item() <= 1e-4
    assert int(cache.length.max()) == 0

    first_idx = torch.cat([clean0, noisy1], dim=1)
    patches = torch.cat([x["in.clean"][:, 0], x["in.infer_noise1"].reshape(n, b, -1)], dim=1)
    commit = torch.zeros(n, 2 * b, dtype=torch.bool)
    commit[:, :b] = True
    got1 = step(first_idx, patches, it[1], commit)
    assert (got1 - x["out.infer_block1_first"]).abs().max().item() <= 1e-4
    assert cache.length.tolist() == [b] * n

    got2 = step(noisy1, x["in.infer_noise1b"].reshape(n, b, -1), it[2])
    assert (got2 - x["out.infer_block1_next"]).abs().max().item() <= 1e-4


def test_video_config_translation():
    """A video config (3-D RoPE, blocks of whole frames) maps from metadata alone."""
    official = {
        "latent_size": 16,
        "block_size": 1024,
        "in_channels": 4,
        "hidden_size": 1152,
        "depth": 28,
        "num_heads": 18,
        "num_classes": 101,
        "ar_len": 4,
        "temporal_len": 16,
        "spatial_len": 256,
        "square_block": False,
    }
    cfg = official_to_config(official)
    assert (cfg.patch_size, cfg.image_size, cfg.frames) == (2, 32, 16)
    assert (cfg.block_kind, cfg.block_size) == ("frames", 4)
    assert cfg.block_spec.num_blocks(cfg.grid) == 4 and cfg.block_spec.block_len(cfg.grid) == 1024
    assert cfg.rope_sections == [16, 24, 24] and cfg.rope_theta == [100.0, 100.0, 100.0]
