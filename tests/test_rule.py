"""The attention rule (ARCHITECTURE.md §2) through the dense reference mask, on real packed layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unimodal import Document, Image, Text
from unimodal.attention import Fields, dense_mask
from unimodal.layout import PAD, TEXT, VISUAL, EncodedDoc, VisualSegment, encode_document, pack
from unimodal.patches import BlockSpec, to_blocks

C = 2  # features per token (channels, patch 1)


def _seg(h: int, w: int, spec: BlockSpec, t: int = 1, seed: int = 0) -> VisualSegment:
    g = torch.Generator().manual_seed(seed)
    tokens, pos = to_blocks(torch.randn(t, C, h, w, generator=g), 1, spec)
    return VisualSegment(tokens, pos, (t, h, w))


def _mask(batch) -> torch.Tensor:
    f = Fields.of(batch.layout)
    m = dense_mask(f, f)
    r, n = batch.layout.shape
    assert m.shape == (r, 1, n, n) and m.dtype == torch.bool
    return m[:, 0]


def _slow_reference(layout) -> torch.Tensor:
    """ARCHITECTURE.md §2, pair by pair, straight from the layout fields (no tensors ops, no broadcasting)."""
    r, n = layout.shape
    out = torch.zeros(r, n, n, dtype=torch.bool)
    for row in range(r):
        doc = layout.doc[row].tolist()
        unit = layout.unit[row].tolist()
        noisy = layout.noisy[row].tolist()
        for q in range(n):
            for k in range(n):
                if doc[q] < 0:  # padding attends to itself only
                    ok = q == k
                elif doc[q] != doc[k]:
                    ok = False
                else:
                    earlier_clean = (not noisy[k]) and unit[k] < unit[q]
                    same_unit_stream = unit[k] == unit[q] and noisy[k] == noisy[q]
                    ok = earlier_clean or same_unit_stream
                out[row, q, k] = ok
    return out


def _groups(layout, row: int = 0) -> dict[tuple[int, bool], list[int]]:
    """Token indices of each (unit, noisy) group of one row."""
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, (d, u, z) in enumerate(
        zip(layout.doc[row].tolist(), layout.unit[row].tolist(), layout.noisy[row].tolist(), strict=True)
    ):
        if d >= 0:
            groups.setdefault((u, z), []).append(i)
    return groups


# ---------------------------------------------------------------------------------------------
# (a) image only: the official SCAM


SCAM_N4 = [
    # c0 c1 c2 c3 | n0 n1 n2 n3
    [1, 0, 0, 0, 0, 0, 0, 0],  # c0
    [1, 1, 0, 0, 0, 0, 0, 0],  # c1
    [1, 1, 1, 0, 0, 0, 0, 0],  # c2
    [1, 1, 1, 1, 0, 0, 0, 0],  # c3
    [0, 0, 0, 0, 1, 0, 0, 0],  # n0
    [1, 0, 0, 0, 0, 1, 0, 0],  # n1
    [1, 1, 0, 0, 0, 0, 1, 0],  # n2
    [1, 1, 1, 0, 0, 0, 0, 1],  # n3
]


def _block_matrix(mask: torch.Tensor, layout, n_blocks: int) -> torch.Tensor:
    """Reduce a token mask of an image-only row to blocks, ordered c0..c_{N-1}, n0..n_{N-1}.

    Checks that the mask is constant on every (block, block) tile, so the reduction loses nothing.
    """
    groups = _groups(layout)
    order = [(j, False) for j in range(n_blocks)] + [(j, True) for j in range(n_blocks)]
    assert sorted(groups) == sorted(order)
    out = torch.zeros(2 * n_blocks, 2 * n_blocks, dtype=torch.bool)
    for a, ga in enumerate(order):
        for b, gb in enumerate(order):
            tile = mask[groups[ga]][:, groups[gb]]
            assert tile.all() or not tile.any(), f"mask not constant on tile {ga} x {gb}"
            out[a, b] = tile.all()
    return out


def test_image_only_n4_is_official_scam():
    seg = _seg(4, 4, BlockSpec("tiles", 2))
    assert seg.tokens.shape[:2] == (4, 4)
    batch = pack([EncodedDoc([seg], label=3)], patch_dim=C)
    mask = _mask(batch)[0]
    assert mask.shape == (32, 32)
    assert _block_matrix(mask, batch.layout, 4).int().tolist() == SCAM_N4


def _official_flex_mask(n: int, b: int) -> torch.Tensor:
    """The official mask_mod in the grouped order [c_0..c_{N-1}, n_0..n_{N-1}] (ACDIT_REFERENCE §1.3)."""
    out = torch.zeros(2 * n * b, 2 * n * b, dtype=torch.bool)
    for q in range(2 * n * b):
        for k in range(2 * n * b):
            qb, kb = q // b, k // b
            out[q, k] = (qb < n and kb < n and qb >= kb) or (qb >= n and kb < n and qb - n > kb) or qb == kb
    return out


@pytest.mark.parametrize(
    "h,w,spec,t",
    [
        (4, 4, BlockSpec("tiles", 2), 1),  # N=4, B=4
        (4, 6, BlockSpec("rows", 2), 1),  # N=2, B=12
        (2, 3, BlockSpec("tiles", 1), 1),  # N=6, B=1 (token-wise)
        (2, 2, BlockSpec("frames", 1), 3),  # video, N=3, B=4
    ],
)
def test_image_only_token_mask_matches_official_mask_mod(h, w, spec, t):
    seg = _seg(h, w, spec, t=t)
    n, b = seg.tokens.shape[:2]
    batch = pack([EncodedDoc([seg])], patch_dim=C)
    mask = _mask(batch)[0]
    lay = batch.layout
    # permutation from our interleaved order (c0 n0 c1 n1 ...) to the official grouped order
    unit, noisy = lay.unit[0], lay.noisy[0]
    grouped_index = noisy.long() * n * b + unit * b + (torch.arange(2 * n * b) % b)
    perm = torch.empty(2 * n * b, dtype=torch.long)
    perm[grouped_index] = torch.arange(2 * n * b)
    assert sorted(grouped_index.tolist()) == list(range(2 * n * b))
    assert torch.equal(mask[perm][:, perm], _official_flex_mask(n, b))


@pytest.mark.parametrize(
    "h,w,spec,n_expected",
    [
        (4, 4, BlockSpec("tiles", 4), 1),
        (4, 4, BlockSpec("rows", 2), 2),
        (2, 4, BlockSpec("tiles", 2), 2),
        (4, 4, BlockSpec("tiles", 2), 4),
        (8, 8, BlockSpec("tiles", 2), 16),
        (4, 4, BlockSpec("tiles", 1), 16),
    ],
)
def test_image_only_density(h, w, spec, n_expected):
    seg = _seg(h, w, spec)
    n = seg.tokens.shape[0]
    assert n == n_expected
    batch = pack([EncodedDoc([seg])], patch_dim=C)
    mask = _mask(batch)[0]
    assert mask.shape == (2 * h * w, 2 * h * w)
    allowed = int(mask.sum())
    # exact: (N+1)/(4N) of (2L)^2  <=>  allowed * 4N == (N+1) * (2L)^2
    assert allowed * 4 * n == (n + 1) * (2 * h * w) ** 2
    assert mask.float().mean().item() == pytest.approx((n + 1) / (4 * n))


# ---------------------------------------------------------------------------------------------
# (b)-(d) text and images


def _doc_text_image_text() -> EncodedDoc:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(4, 4, C), dtype=np.uint8)
    return encode_document(
        Document([Text(ids=[11, 12, 13]), Image(arr), Text(ids=[21, 22, 23])]), 1, BlockSpec("tiles", 2)
    )


def test_text_image_text_rule():
    batch = pack([_doc_text_image_text()], patch_dim=C)
    lay = batch.layout
    mask = _mask(batch)[0]
    n = lay.shape[1]
    assert n == 3 + 2 * 16 + 3
    mod, noisy, block = lay.modality[0], lay.noisy[0], lay.block[0]
    is_text = mod == TEXT
    text_idx = is_text.nonzero().flatten().tolist()
    prompt, after = text_idx[:3], text_idx[3:]
    assert after[0] == 35
    clean_img = ((mod == VISUAL) & ~noisy).nonzero().flatten().tolist()
    noisy_img = ((mod == VISUAL) & noisy).nonzero().flatten().tolist()
    assert len(clean_img) == len(noisy_img) == 16

    # text is causal among text tokens
    for i, q in enumerate(text_idx):
        for j, k in enumerate(text_idx):
            assert mask[q, k] == (j <= i), (q, k)
    # the prompt sees nothing of the image
    assert not mask[prompt][:, clean_img + noisy_img].any()
    # text after the image sees every clean image token and no noisy token
    assert mask[after][:, clean_img].all()
    assert not mask[after][:, noisy_img].any()
    # nothing ever sees a noisy token of another unit, and no clean token sees a noisy token
    assert not mask[~noisy][:, noisy].any()
    # noisy block i: prompt text + clean blocks < i + itself, nothing else
    for i in range(4):
        rows = ((block == i) & noisy).nonzero().flatten()
        expect = torch.zeros(n, dtype=torch.bool)
        expect[prompt] = True
        expect[(block < i) & (block >= 0) & ~noisy] = True
        expect[(block == i) & noisy] = True
        for q in rows.tolist():
            assert torch.equal(mask[q], expect), (i, q)
    # clean block i: prompt + clean blocks <= i
    for i in range(4):
        expect = torch.zeros(n, dtype=torch.bool)
        expect[prompt] = True
        expect[(block <= i) & (block >= 0) & ~noisy] = True
        for q in ((block == i) & ~noisy).nonzero().flatten().tolist():
            assert torch.equal(mask[q], expect), (i, q)
    assert torch.equal(_mask(batch), _slow_reference(lay))


def test_two_images_in_one_document():
    doc = EncodedDoc(
        [[1, 2], _seg(2, 4, BlockSpec("tiles", 2), seed=1), [3], _seg(4, 4, BlockSpec("tiles", 2), seed=2), [4, 5]]
    )
    batch = pack([doc], patch_dim=C)
    lay = batch.layout
    mask = _mask(batch)[0]
    block, noisy, mod = lay.block[0], lay.noisy[0], lay.modality[0]
    img1 = (block >= 0) & (block < 2)
    img2 = block >= 2
    assert int(img1.sum()) == 2 * 8 and int(img2.sum()) == 2 * 16
    text = (mod == TEXT).nonzero().flatten().tolist()
    middle, last = text[2], text[3:]
    # the text between the images sees image 1 clean only, nothing of image 2
    assert mask[middle][img1 & ~noisy].all() and not mask[middle][img1 & noisy].any()
    assert not mask[middle][img2].any()
    # image 2's noisy blocks see all of image 1 clean, none of image 1 noisy, and the text before
    for j in range(2, 6):
        q = ((block == j) & noisy).nonzero().flatten()
        assert mask[q][:, img1 & ~noisy].all()
        assert not mask[q][:, img1 & noisy].any()
        assert mask[q][:, text[:3]].all()
        assert not mask[q][:, text[3:]].any()
        assert not mask[q][:, (block >= j + 1)].any()
        assert not mask[q][:, (block == j) & ~noisy].any()  # never its own clean copy
    # final text sees both images' clean copies
    assert mask[last][:, (block >= 0) & ~noisy].all()
    assert not mask[last][:, noisy].any()
    assert torch.equal(_mask(batch), _slow_reference(lay))


@pytest.mark.parametrize("caption_first", [True, False])
def test_caption_first_and_image_first(caption_first):
    seg = _seg(4, 4, BlockSpec("tiles", 2), seed=3)
    caption = [7, 8, 9, 10]
    doc = EncodedDoc([caption, seg] if caption_first else [seg, caption])
    batch = pack([doc], patch_dim=C)
    lay = batch.layout
    mask = _mask(batch)[0]
    block, noisy, mod = lay.block[0], lay.noisy[0], lay.modality[0]
    text = mod == TEXT
    n0 = (block == 0) & noisy
    if caption_first:
        # the first noisy block is conditioned on the whole caption (text-to-image)
        assert mask[n0][:, text].all()
        assert int(mask[n0].sum(-1)[0]) == 4 + 4
        assert not mask[text][:, block >= 0].any()
    else:
        # the first noisy block sees only itself (unconditional first block)
        assert torch.equal(mask[n0][:, n0], torch.ones(4, 4, dtype=torch.bool))
        assert int(mask[n0].sum()) == 16
        # the caption sees the whole clean image (captioning) and no noisy token
        assert mask[text][:, (block >= 0) & ~noisy].all()
        assert not mask[text][:, noisy].any()
    assert torch.equal(_mask(batch), _slow_reference(lay))


def test_video_and_rows_documents_match_reference():
    docs = [
        EncodedDoc([[1, 2, 3], _seg(2, 2, BlockSpec("frames", 2), t=4, seed=4), [4]]),
        EncodedDoc([_seg(4, 2, BlockSpec("rows", 1), seed=5), [5, 6], _seg(2, 2, BlockSpec("tiles", 2), seed=6)]),
    ]
    batch = pack(docs, patch_dim=C)
    assert batch.layout.shape[0] == 2
    assert torch.equal(_mask(batch), _slow_reference(batch.layout))


# ---------------------------------------------------------------------------------------------
# (e) packing, (f) padding


def _packed_batch():
    docs = [
        EncodedDoc([[1, 2, 3], _seg(2, 2, BlockSpec("tiles", 1), seed=7), [4, 5]]),  # 3 + 8 + 2 = 13
        EncodedDoc([_seg(2, 4, BlockSpec("tiles", 2), seed=8), [6]]),  # 16 + 1 = 17
        EncodedDoc([[7, 8, 9, 10]]),  # 4
        EncodedDoc([[11], _seg(2, 2, BlockSpec("tiles", 2), seed=9)]),  # 1 + 8 = 9
        EncodedDoc([[12, 13]]),  # 2
    ]
    return pack(docs, patch_dim=C, row_len=30, pad_multiple=8)


def test_packed_rows_no_attention_across_documents():
    batch = _packed_batch()
    lay = batch.layout
    r, n = lay.shape
    assert (r, n) == (2, 32)
    # several documents share each row (first fit: [0, 1] and [2, 3, 4])
    assert [sorted(set(lay.doc[row].tolist()) - {-1}) for row in range(r)] == [[0, 1], [2, 3, 4]]
    mask = _mask(batch)
    same_doc = lay.doc[:, :, None] == lay.doc[:, None, :]
    assert not (mask & ~same_doc).any()
    # and each document's block of the mask equals that document packed alone
    docs_rows = {}
    for row in range(r):
        for d in set(lay.doc[row].tolist()) - {-1}:
            docs_rows[d] = row
    for d, row in docs_rows.items():
        sel = (lay.doc[row] == d).nonzero().flatten()
        sub = mask[row][sel][:, sel]
        idx = torch.arange(len(sel)).unsqueeze(0)
        f = Fields(lay.doc[row : row + 1, sel], lay.unit[row : row + 1, sel], lay.noisy[row : row + 1, sel], idx)
        assert torch.equal(sub, dense_mask(f, f)[0, 0])
        # a document that starts mid-row: its first token sees only itself (or its unit)
        first = sel[0].item()
        assert mask[row, first, :first].sum() == 0
    assert torch.equal(mask, _slow_reference(lay))


def test_padding_rows():
    batch = _packed_batch()
    lay = batch.layout
    mask = _mask(batch)
    pad = lay.doc < 0
    assert pad.any(), "the test needs padding"
    assert (lay.modality[pad] == PAD).all()
    for row, q in pad.nonzero().tolist():
        expect = torch.zeros(lay.shape[1], dtype=torch.bool)
        expect[q] = True
        assert torch.equal(mask[row, q], expect)
    # no real query attends to padding
    assert not (mask & pad[:, None, :] & ~pad[:, :, None]).any()
    # no all-False row
    assert mask.any(-1).all()


def test_padding_sdpa_no_nan():
    batch = _packed_batch()
    mask = dense_mask(Fields.of(batch.layout), Fields.of(batch.layout))
    r, n = batch.layout.shape
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(r, 2, n, 16, generator=g) for _ in range(3))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert out.shape == (r, 2, n, 16)
    assert torch.isfinite(out).all()
    # a padding query attends to itself only, so its output is its own value
    pad = batch.layout.doc < 0
    for row, i in pad.nonzero().tolist():
        assert torch.allclose(out[row, :, i], v[row, :, i], atol=1e-6)
    # a one-token first unit (first text token of a row) also sees only itself
    assert torch.allclose(out[0, :, 0], v[0, :, 0], atol=1e-6)


def test_offset_indices_do_not_change_real_tokens():
    """Fields.of(offset=...) (cache positions) only shifts indices; the rule reads them for padding only."""
    batch = _packed_batch()
    f0 = Fields.of(batch.layout)
    f5 = Fields.of(batch.layout, offset=5)
    assert torch.equal(f5.idx, f0.idx + 5)
    assert torch.equal(dense_mask(f5, f5), dense_mask(f0, f0))


def test_several_noisy_copies_match_the_rule_pair_by_pair():
    """K noisy copies per block: each copy sees the earlier clean units and itself, never another
    copy; clean tokens see no copy. Checked pair by pair against the rule written out."""
    seg = _seg(4, 4, BlockSpec("tiles", 2))
    batch = pack([EncodedDoc([[5, 6], seg, [7]]), EncodedDoc([seg, [8, 9]])], patch_dim=C, noisy_copies=3)
    lay = batch.layout
    assert set(lay.stream.unique().tolist()) == {0, 1, 2, 3}
    mask = _mask(batch)
    r, n = lay.shape
    for row in range(r):
        doc, unit, stream = (x[row].tolist() for x in (lay.doc, lay.unit, lay.stream))
        for q in range(n):
            for k in range(n):
                if doc[q] < 0:
                    ok = q == k
                elif doc[q] != doc[k]:
                    ok = False
                elif stream[k] == 0:  # a clean key: any strictly earlier unit, or the query's own clean unit
                    ok = unit[k] < unit[q] or (unit[k] == unit[q] and stream[q] == 0)
                else:  # a noisy key: only the tokens of the same copy of the same block
                    ok = unit[k] == unit[q] and stream[k] == stream[q]
                assert bool(mask[row, q, k]) == ok, (row, q, k)
