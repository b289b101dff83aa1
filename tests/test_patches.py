"""Patches and blocks: exact inverses, the official token order, positions, and clear errors."""

from __future__ import annotations

import pytest
import torch

from unimodal.patches import BlockSpec, block_order, from_blocks, grid_positions, patchify, to_blocks, unpatchify


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


# ---------------------------------------------------------------------------------------------
# patchify / unpatchify


@pytest.mark.parametrize("shape,patch", [((1, 3, 8, 8), 2), ((1, 4, 6, 10), 2), ((3, 2, 12, 9), 3), ((2, 1, 4, 4), 1)])
def test_patchify_unpatchify_exact_inverse(shape, patch):
    x = _rand(*shape)
    p = patchify(x, patch)
    t, c, h, w = shape
    assert p.shape == (t, h // patch, w // patch, c * patch * patch)
    assert torch.equal(unpatchify(p, patch), x)


def test_patchify_feature_order_is_channel_major():
    """Patch (i, j) of frame f holds x[f, :, i*p:(i+1)*p, j*p:(j+1)*p] flattened in (c, row, col) order."""
    x = _rand(2, 3, 6, 4, seed=1)
    p = 2
    out = patchify(x, p)
    for f in range(2):
        for i in range(3):
            for j in range(2):
                expected = x[f, :, i * p : (i + 1) * p, j * p : (j + 1) * p].reshape(-1)
                assert torch.equal(out[f, i, j], expected)


def test_patchify_rejects_non_dividing_patch():
    with pytest.raises(ValueError, match="patch size 2"):
        patchify(torch.zeros(1, 3, 5, 4), 2)
    with pytest.raises(ValueError, match="patch size 3"):
        patchify(torch.zeros(1, 3, 6, 4), 3)


# ---------------------------------------------------------------------------------------------
# to_blocks / from_blocks


ROUND_TRIPS = [
    # (T, C, H, W), patch, spec
    ((1, 3, 8, 8), 1, BlockSpec("tiles", 1)),  # token-wise AR
    ((1, 3, 8, 8), 1, BlockSpec("tiles", 2)),
    ((1, 3, 8, 8), 2, BlockSpec("tiles", 2)),
    ((1, 3, 8, 12), 2, BlockSpec("tiles", 2)),  # non-square grid
    ((1, 3, 8, 8), 1, BlockSpec("tiles", 8)),  # one tile = the whole grid (DiT)
    ((1, 2, 8, 8), 2, BlockSpec("rows", 1)),
    ((1, 2, 8, 6), 1, BlockSpec("rows", 4)),
    ((1, 2, 8, 6), 1, BlockSpec("rows", 8)),  # whole grid
    ((4, 2, 4, 4), 1, BlockSpec("frames", 1)),  # video
    ((4, 2, 8, 8), 2, BlockSpec("frames", 2)),
    ((4, 2, 4, 4), 2, BlockSpec("frames", 4)),  # whole clip
    ((2, 2, 8, 8), 2, BlockSpec("tiles", 2)),  # video cut into tiles frame by frame
    ((3, 1, 6, 6), 1, BlockSpec("rows", 3)),  # video cut into rows frame by frame
]


@pytest.mark.parametrize("shape,patch,spec", ROUND_TRIPS)
def test_to_blocks_from_blocks_exact_inverse(shape, patch, spec):
    x = _rand(*shape, seed=2)
    tokens, pos = to_blocks(x, patch, spec)
    t, c, h, w = shape
    grid = (t, h // patch, w // patch)
    n, b = spec.num_blocks(grid), spec.block_len(grid)
    assert tokens.shape == (n, b, c * patch * patch)
    assert pos.shape == (n, b, 3)
    assert n * b == t * (h // patch) * (w // patch)
    assert torch.equal(from_blocks(tokens, grid, patch, spec), x)
    # a non-contiguous view (every other column of a wider image) gives the same tokens
    view = torch.stack([x, x], dim=-1).flatten(-2)[..., ::2]
    assert not view.is_contiguous() and torch.equal(to_blocks(view, patch, spec)[0], tokens)


@pytest.mark.parametrize("shape,patch,spec", ROUND_TRIPS[::3])
def test_from_blocks_with_batch_leading_dims(shape, patch, spec):
    xs = _rand(2, 3, *shape, seed=3)
    t, _, h, w = shape
    grid = (t, h // patch, w // patch)
    tokens = torch.stack([torch.stack([to_blocks(xs[i, j], patch, spec)[0] for j in range(3)]) for i in range(2)])
    assert tokens.shape[:2] == (2, 3)
    out = from_blocks(tokens, grid, patch, spec)
    assert out.shape == xs.shape
    assert torch.equal(out, xs)
    # each element of the batch is reassembled from its own tokens (no mixing across the batch)
    assert torch.equal(from_blocks(tokens[1, 2], grid, patch, spec), xs[1, 2])


def _raster_image(t: int, h: int, w: int) -> torch.Tensor:
    """A (T, 1, H, W) image whose value at each pixel is its raster index (patch 1 -> token = index)."""
    return torch.arange(t * h * w, dtype=torch.float32).reshape(t, 1, h, w)


def test_official_tile_order_4x4_grid_2x2_tiles():
    expected = [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    assert block_order((1, 4, 4), BlockSpec("tiles", 2)).tolist() == expected
    tokens, _ = to_blocks(_raster_image(1, 4, 4), 1, BlockSpec("tiles", 2))
    assert tokens.shape == (4, 4, 1)
    assert tokens.reshape(-1).long().tolist() == expected
    # block j holds exactly tile j
    assert tokens[1, :, 0].long().tolist() == [2, 3, 6, 7]


def test_official_tile_order_non_square_grid_and_video():
    # 4x6 grid, 2x2 tiles: 2 rows of 3 tiles
    expected = [0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11, 12, 13, 18, 19, 14, 15, 20, 21, 16, 17, 22, 23]
    assert block_order((1, 4, 6), BlockSpec("tiles", 2)).tolist() == expected
    # video: frame 0's tiles, then frame 1's tiles
    frame0 = [0, 1, 4, 5, 2, 3, 6, 7]
    expected_video = frame0 + [i + 8 for i in frame0]
    tokens, _ = to_blocks(_raster_image(2, 2, 4), 1, BlockSpec("tiles", 2))
    assert tokens.reshape(-1).long().tolist() == expected_video


def test_tile_of_patches_with_patch_size_2():
    """4x4 pixels, patch 2 -> 2x2 patch grid; tiles of 1 patch are raster order of patches."""
    x = _raster_image(1, 4, 4)
    tokens, pos = to_blocks(x, 2, BlockSpec("tiles", 1))
    assert tokens.shape == (4, 1, 4)
    assert tokens[:, 0].long().tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    assert pos[:, 0].tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]]


def test_rows_and_frames_order_is_raster_cut_into_chunks():
    tokens, _ = to_blocks(_raster_image(1, 4, 3), 1, BlockSpec("rows", 2))
    assert tokens[..., 0].long().tolist() == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]
    tokens, _ = to_blocks(_raster_image(4, 2, 2), 1, BlockSpec("frames", 2))
    assert tokens[..., 0].long().tolist() == [list(range(8)), list(range(8, 16))]
    tokens, _ = to_blocks(_raster_image(2, 2, 2), 1, BlockSpec("rows", 1))
    assert tokens[..., 0].long().tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]


@pytest.mark.parametrize(
    "grid,spec",
    [
        ((1, 4, 4), BlockSpec("tiles", 2)),
        ((1, 4, 6), BlockSpec("tiles", 2)),
        ((2, 6, 6), BlockSpec("tiles", 3)),
        ((1, 4, 4), BlockSpec("tiles", 1)),
        ((1, 6, 4), BlockSpec("rows", 3)),
        ((4, 3, 5), BlockSpec("frames", 2)),
    ],
)
def test_positions_are_grid_coordinates_of_each_token(grid, spec):
    """Image channels carry (t, h, w) of each pixel; with patch 1 each token must equal its position."""
    t, h, w = grid
    coords = torch.stack(
        torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"), dim=1
    ).float()  # (T, 3, H, W)
    tokens, pos = to_blocks(coords, 1, spec)
    assert pos.dtype in (torch.int64, torch.int32)
    assert torch.equal(tokens.long(), pos.long())
    # every grid cell appears exactly once
    assert sorted(map(tuple, pos.reshape(-1, 3).tolist())) == sorted(
        (a, b, c) for a in range(t) for b in range(h) for c in range(w)
    )


def test_positions_with_patch_size_are_patch_grid_coordinates():
    x = _raster_image(1, 8, 4)  # patch 2 -> 4x2 patch grid
    tokens, pos = to_blocks(x, 2, BlockSpec("tiles", 2))
    # the top-left pixel of patch (r, c) has raster index (2r)*4 + 2c
    top_left = tokens[..., 0].long()
    assert torch.equal(top_left, pos[..., 1] * 8 + pos[..., 2] * 2)
    assert pos[0].tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]]
    assert pos[1].tolist() == [[0, 2, 0], [0, 2, 1], [0, 3, 0], [0, 3, 1]]


def test_grid_positions_raster():
    assert grid_positions((2, 1, 2)).tolist() == [[0, 0, 0], [0, 0, 1], [1, 0, 0], [1, 0, 1]]


@pytest.mark.parametrize(
    "shape,patch,spec,match",
    [
        ((1, 3, 8, 12), 2, BlockSpec("tiles", 4), "tiles of 4x4"),  # 4x6 grid
        ((1, 3, 12, 8), 1, BlockSpec("tiles", 5), "tiles of 5x5"),
        ((1, 3, 6, 6), 1, BlockSpec("rows", 4), "runs of 4 rows"),
        ((3, 3, 4, 4), 1, BlockSpec("frames", 2), "runs of 2 frames"),
        ((1, 3, 7, 8), 2, BlockSpec("tiles", 1), "patch size 2"),
        ((1, 3, 8, 9), 2, BlockSpec("rows", 1), "patch size 2"),
    ],
)
def test_to_blocks_errors_when_not_dividing(shape, patch, spec, match):
    with pytest.raises(ValueError, match=match):
        to_blocks(torch.zeros(shape), patch, spec)


def test_block_spec_errors():
    with pytest.raises(ValueError, match="tiles of 3x3"):
        BlockSpec("tiles", 3).block_len((1, 4, 6))
    with pytest.raises(ValueError, match="tiles of 3x3"):
        block_order((1, 6, 4), BlockSpec("tiles", 3))
    with pytest.raises(ValueError, match="runs of 2 frames"):
        from_blocks(torch.zeros(1, 3, 4, 1), (3, 2, 2), 1, BlockSpec("frames", 2))
    with pytest.raises(ValueError, match="kind"):
        BlockSpec("squares", 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size"):
        BlockSpec("tiles", 0)


def test_block_len_and_num_blocks():
    assert BlockSpec("tiles", 2).block_len((1, 4, 6)) == 4
    assert BlockSpec("tiles", 2).num_blocks((1, 4, 6)) == 6
    assert BlockSpec("tiles", 2).num_blocks((3, 4, 6)) == 18
    assert BlockSpec("rows", 2).block_len((1, 4, 6)) == 12
    assert BlockSpec("rows", 2).num_blocks((2, 4, 6)) == 4
    assert BlockSpec("frames", 2).block_len((4, 4, 6)) == 48
    assert BlockSpec("frames", 2).num_blocks((4, 4, 6)) == 2
