"""The packed layout (`pack`) and ModelConfig validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unimodal import Document, Image, ModelConfig, Text
from unimodal.config import PRESETS
from unimodal.layout import IGNORE, PAD, TEXT, VISUAL, EncodedDoc, VisualSegment, encode_document, pack
from unimodal.patches import BlockSpec, from_blocks, to_blocks


def _seg(t: int, h: int, w: int, spec: BlockSpec, c: int = 2, patch: int = 1, seed: int = 0) -> VisualSegment:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, c, h, w, generator=g)
    tokens, pos = to_blocks(x, patch, spec)
    return VisualSegment(tokens, pos, (t, h // patch, w // patch))


def _image(seg: VisualSegment, spec: BlockSpec, patch: int = 1) -> torch.Tensor:
    return from_blocks(seg.tokens, seg.grid, patch, spec)


TILE2 = BlockSpec("tiles", 2)


def _text_image_text() -> tuple[EncodedDoc, VisualSegment]:
    """[text 11 12 13] [image 4x4, 2x2 tiles -> 4 blocks of 4] [text 21 22]."""
    seg = _seg(1, 4, 4, TILE2)
    return EncodedDoc([[11, 12, 13], seg, [21, 22]]), seg


# ---------------------------------------------------------------------------------------------
# units, noisy copies, blocks


def test_unit_numbering_and_streams_text_image_text():
    doc, _ = _text_image_text()
    b = pack([doc], patch_dim=2)
    lay = b.layout
    n = 3 + 4 * 2 * 4 + 2
    assert lay.shape == (1, n)
    expected_unit = [0, 1, 2]
    expected_noisy = [False] * 3
    for j in range(4):
        expected_unit += [3 + j] * 8
        expected_noisy += [False] * 4 + [True] * 4  # clean copy, then the noisy copy right after
    expected_unit += [7, 8]
    expected_noisy += [False, False]
    assert lay.unit[0].tolist() == expected_unit
    assert lay.noisy[0].tolist() == expected_noisy
    assert lay.modality[0].tolist() == [TEXT] * 3 + [VISUAL] * 32 + [TEXT] * 2
    assert lay.doc[0].tolist() == [0] * n
    assert lay.block[0].tolist() == [-1] * 3 + [j for j in range(4) for _ in range(8)] + [-1] * 2
    assert b.tokens[0].tolist() == [11, 12, 13] + [0] * 32 + [21, 22]


def test_unit_numbering_restarts_per_document_in_a_packed_row():
    doc_a = EncodedDoc([[1, 2], _seg(1, 2, 2, BlockSpec("tiles", 1))])  # 2 text + 4 blocks of 1
    doc_b = EncodedDoc([[5, 6, 7]])
    b = pack([doc_a, doc_b], patch_dim=2, row_len=32)
    lay = b.layout
    assert lay.shape[0] == 1
    na = 2 + 4 * 2
    assert lay.doc[0, :na].tolist() == [0] * na
    assert lay.unit[0, :na].tolist() == [0, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert lay.doc[0, na : na + 3].tolist() == [1, 1, 1]
    assert lay.unit[0, na : na + 3].tolist() == [0, 1, 2]


def test_without_noisy_copies():
    doc, _ = _text_image_text()
    b = pack([doc], patch_dim=2, with_noisy=False)
    lay = b.layout
    assert lay.shape == (1, 3 + 16 + 2)
    assert not lay.noisy.any()
    assert lay.unit[0].tolist() == [0, 1, 2] + [3 + j for j in range(4) for _ in range(4)] + [7, 8]


def test_noisy_copies_share_positions_blocks_and_clean_patches():
    doc, seg = _text_image_text()
    b = pack([doc], patch_dim=2)
    lay = b.layout
    for j in range(4):
        clean = (lay.unit[0] == 3 + j) & ~lay.noisy[0]
        noisy = (lay.unit[0] == 3 + j) & lay.noisy[0]
        assert clean.sum() == 4 and noisy.sum() == 4
        assert torch.equal(lay.pos[0][clean], lay.pos[0][noisy])
        assert lay.block[0][clean].tolist() == [j] * 4
        assert lay.block[0][noisy].tolist() == [j] * 4
        # the clean x0 of block j sits at both copies (the diffusion module noises the noisy one)
        assert torch.equal(b.patches[0][clean], seg.tokens[j])
        assert torch.equal(b.patches[0][noisy], seg.tokens[j])
    assert torch.equal(b.patches[0][lay.modality[0] == TEXT], torch.zeros(5, 2))


def test_patches_reassemble_to_the_image():
    """Taking the clean patches by block id and undoing the blocks gives back the input image."""
    g = torch.Generator().manual_seed(4)
    x1 = torch.randn(1, 3, 8, 8, generator=g)
    x2 = torch.randn(1, 3, 4, 8, generator=g)
    docs = [
        encode_document(Document([Text(ids=[1, 2]), Image(x1, latent=True)]), 2, TILE2),
        encode_document(Document([Image(x2, latent=True), Text(ids=[3])]), 2, BlockSpec("tiles", 1)),
    ]
    b = pack(docs, patch_dim=12, row_len=128)
    lay = b.layout
    assert b.images == [(0, 0, (1, 4, 4)), (1, 4, (1, 2, 4))]
    for (d, first, grid), x, spec in zip(b.images, (x1, x2), (TILE2, BlockSpec("tiles", 1)), strict=True):
        n = spec.num_blocks(grid)
        blocks = []
        for k in range(first, first + n):
            sel = (lay.block == k) & ~lay.noisy
            assert (lay.doc[sel] == d).all()
            blocks.append(b.patches[sel])
        assert torch.equal(from_blocks(torch.stack(blocks), grid, 2, spec), x)


# ---------------------------------------------------------------------------------------------
# positions (M-RoPE)


def test_mrope_positions_text_image_text():
    doc, seg = _text_image_text()
    lay = pack([doc], patch_dim=2).layout
    pos = lay.pos[0]
    # text: the same index on all 3 axes, increasing
    assert pos[:3].tolist() == [[0, 0, 0], [1, 1, 1], [2, 2, 2]]
    # image tokens: local (t, h, w) offset by the running index (3)
    vis = lay.modality[0] == VISUAL
    clean = vis & ~lay.noisy[0]
    assert torch.equal(pos[clean], seg.pos.reshape(-1, 3) + 3)
    assert pos[clean][:4].tolist() == [[3, 3, 3], [3, 3, 4], [3, 4, 3], [3, 4, 4]]
    # text after the image continues at offset + max(grid) = 3 + 4
    assert pos[-2:].tolist() == [[7, 7, 7], [8, 8, 8]]
    # all image positions are strictly before the next text index on every axis
    assert (pos[vis] < 7).all()


def test_mrope_positions_non_square_image_and_video():
    seg_img = _seg(1, 2, 6, TILE2)  # grid (1, 2, 6): max 6
    seg_vid = _seg(3, 2, 2, BlockSpec("frames", 1))  # grid (3, 2, 2): max 3
    doc = EncodedDoc([seg_img, [9], seg_vid, [8, 7]])
    lay = pack([doc], patch_dim=2).layout
    pos, mod, noisy = lay.pos[0], lay.modality[0], lay.noisy[0]
    n_img = 12 * 2
    assert torch.equal(pos[:n_img][~noisy[:n_img]], seg_img.pos.reshape(-1, 3))  # offset 0
    assert pos[n_img].tolist() == [6, 6, 6]  # text after the image: 0 + max(1, 2, 6)
    vid = slice(n_img + 1, n_img + 1 + 12 * 2)
    assert (mod[vid] == VISUAL).all()
    assert torch.equal(pos[vid][~noisy[vid]], seg_vid.pos.reshape(-1, 3) + 7)
    assert pos[vid][~noisy[vid]][-1].tolist() == [7 + 2, 7 + 1, 7 + 1]
    assert pos[-2:].tolist() == [[10, 10, 10], [11, 11, 11]]  # 7 + max(3, 2, 2)


def test_origin_gives_positions_inside_the_segment():
    """pos - origin is each visual token's (t, h, w) inside its image or clip, both copies."""
    seg_img = _seg(1, 2, 6, TILE2)
    seg_vid = _seg(3, 2, 2, BlockSpec("frames", 1))
    lay = pack([EncodedDoc([[5, 6], seg_img, [9], seg_vid, [8]])], patch_dim=2).layout
    vis, noisy = lay.modality[0] == VISUAL, lay.noisy[0]
    local = lay.pos[0] - lay.origin[0].unsqueeze(-1)
    n_img = 12 * 2
    img, vid = slice(2, 2 + n_img), slice(3 + n_img, 3 + 2 * n_img)
    for sl, seg in ((img, seg_img), (vid, seg_vid)):
        assert torch.equal(local[sl][~noisy[sl]], seg.pos.reshape(-1, 3))
        assert torch.equal(local[sl][noisy[sl]], seg.pos.reshape(-1, 3))
    assert lay.origin[0][img].unique().tolist() == [2] and lay.origin[0][vid].unique().tolist() == [9]
    assert (lay.origin[0][~vis] == 0).all()


def test_positions_restart_per_document():
    doc, _ = _text_image_text()
    lay = pack([EncodedDoc([[1, 2, 3, 4]]), doc], patch_dim=2, row_len=64).layout
    assert lay.doc[0, :4].tolist() == [0] * 4
    assert lay.pos[0, 4:7].tolist() == [[0, 0, 0], [1, 1, 1], [2, 2, 2]]


# ---------------------------------------------------------------------------------------------
# text targets


def test_text_targets_next_text_only():
    doc, _ = _text_image_text()
    b = pack([doc], patch_dim=2)
    expected = [12, 13, IGNORE] + [IGNORE] * 32 + [22, IGNORE]
    assert b.text_targets[0].tolist() == expected


def test_text_targets_never_cross_documents():
    docs = [EncodedDoc([[1, 2, 3]]), EncodedDoc([[4, 5]]), EncodedDoc([[6], _seg(1, 2, 2, BlockSpec("tiles", 2))])]
    b = pack(docs, patch_dim=2, row_len=20, pad_multiple=8)
    r, n = b.layout.shape
    assert r == 1 and n % 8 == 0 and n >= 3 + 2 + 1 + 8
    assert b.layout.doc[0, :14].tolist() == [0] * 3 + [1] * 2 + [2] * 9
    tgt = b.text_targets[0].tolist()
    assert tgt[:5] == [2, 3, IGNORE, 5, IGNORE]
    assert tgt[5:] == [IGNORE] * (n - 5)  # doc 2: its only text token is followed by an image; then padding


# ---------------------------------------------------------------------------------------------
# padding and packing


def test_pad_multiple_padding_fields():
    doc, _ = _text_image_text()  # 37 tokens
    short = EncodedDoc([[4, 5, 6]])
    b = pack([doc, short], patch_dim=2, pad_multiple=16)
    lay = b.layout
    assert lay.shape == (2, 48)
    real = torch.zeros(2, 48, dtype=torch.bool)
    real[0, :37] = True
    real[1, :3] = True
    pad = ~real
    assert (lay.doc[pad] == -1).all() and (lay.doc[real] >= 0).all()
    assert (lay.modality[pad] == PAD).all()
    assert (lay.block[pad] == -1).all()
    assert not lay.noisy[pad].any()
    assert (b.tokens[pad] == 0).all()
    assert (b.text_targets[pad] == IGNORE).all()
    assert (b.patches[pad] == 0).all()
    assert lay.doc[1, :3].tolist() == [1, 1, 1]


def test_pad_to_bucket():
    doc, _ = _text_image_text()  # 37 tokens
    b = pack([doc, EncodedDoc([[1, 2]])], patch_dim=2, pad_to=64)
    assert b.layout.shape == (2, 64)
    assert (b.layout.doc[0, 37:] == -1).all() and (b.layout.doc[1, 2:] == -1).all()
    assert pack([doc], patch_dim=2, pad_to=40, pad_multiple=16).layout.shape == (1, 48)
    with pytest.raises(ValueError, match="pad_to=36"):
        pack([doc], patch_dim=2, pad_to=36)


def test_no_padding_by_default():
    doc, _ = _text_image_text()
    b = pack([doc, EncodedDoc([[1]])], patch_dim=2)
    assert b.layout.shape == (2, 37)
    assert (b.layout.doc[0] == 0).all()


def test_row_len_first_fit_packing():
    lens = [5, 8, 3, 4, 2]
    docs = [EncodedDoc([list(range(100 * i, 100 * i + n))]) for i, n in enumerate(lens)]
    b = pack(docs, patch_dim=1, row_len=10, pad_multiple=4)
    lay = b.layout
    # first fit in order: row0 <- 0 (5), row1 <- 1 (8), row0 <- 2 (5+3=8), row2 <- 3 (fits neither), row0 <- 4 (8+2)
    assert lay.shape == (3, 12)
    assert lay.doc[0].tolist() == [0] * 5 + [2] * 3 + [4] * 2 + [-1] * 2
    assert lay.doc[1].tolist() == [1] * 8 + [-1] * 4
    assert lay.doc[2].tolist() == [3] * 4 + [-1] * 8
    assert b.tokens[0, 5:8].tolist() == [200, 201, 202]


def test_row_len_too_long_document_is_an_error_naming_it():
    docs = [EncodedDoc([[1] * 4]), EncodedDoc([[1] * 11]), EncodedDoc([[1] * 2])]
    with pytest.raises(ValueError, match=r"document 1 has 11 tokens.*row_len=10"):
        pack(docs, patch_dim=1, row_len=10)


def test_wrong_patch_dim_is_an_error():
    doc, _ = _text_image_text()
    with pytest.raises(ValueError, match="patch features have size 2, expected 3"):
        pack([doc], patch_dim=3)


# ---------------------------------------------------------------------------------------------
# block table


def test_block_label_and_block_doc():
    docs = [
        EncodedDoc([_seg(1, 4, 4, TILE2)], label=7),  # 4 blocks
        EncodedDoc([[1, 2]]),  # no blocks
        EncodedDoc([_seg(1, 2, 2, BlockSpec("tiles", 1)), [3], _seg(1, 2, 2, TILE2)]),  # 4 + 1 blocks, no label
        EncodedDoc([_seg(1, 2, 4, TILE2)], label=0),  # 2 blocks
    ]
    b = pack(docs, patch_dim=2, row_len=64)
    assert b.block_label.tolist() == [7] * 4 + [-1] * 5 + [0] * 2
    assert b.block_doc.tolist() == [0] * 4 + [2] * 5 + [3] * 2
    lay = b.layout
    # every block id points to tokens of its own document, 2 * B tokens each (clean + noisy)
    for k, d in enumerate(b.block_doc.tolist()):
        sel = lay.block == k
        assert (lay.doc[sel] == d).all()
        assert sel.sum() % 2 == 0 and (lay.noisy[sel].sum() * 2 == sel.sum())
    assert b.images == [(0, 0, (1, 4, 4)), (2, 4, (1, 2, 2)), (2, 8, (1, 2, 2)), (3, 9, (1, 2, 4))]


def test_encode_document_from_pixels():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    doc = encode_document(Document([Text(ids=[5, 6]), Image(arr), Text(ids=[7])], label=3), 2, TILE2)
    assert doc.label == 3
    assert doc.segments[0] == [5, 6] and doc.segments[2] == [7]
    seg = doc.segments[1]
    assert isinstance(seg, VisualSegment)
    assert seg.grid == (1, 4, 4)
    assert seg.tokens.shape == (4, 4, 12)
    x = torch.as_tensor(arr).permute(2, 0, 1).unsqueeze(0).float() / 127.5 - 1.0
    assert torch.allclose(from_blocks(seg.tokens, seg.grid, 2, TILE2), x)
    with pytest.raises(ValueError, match="no ids and no tokenizer"):
        encode_document(Document([Text("hello")]), 2, TILE2)
    tok = encode_document(Document([Text("ab")]), 2, TILE2, tokenize=lambda s: [ord(c) for c in s])
    assert tok.segments == [[97, 98]]


def test_uint8_pixels_convert_by_lookup_as_by_arithmetic():
    """The uint8 fast path of `Image.to_tensor` gives, bit for bit, what the float arithmetic does,
    for every value, image and clip; `is_uint8` says which images need no NaN scan."""
    rng = np.random.default_rng(0)
    for shape in [(5, 7), (4, 6, 3), (3, 4, 6, 3)]:
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        a.flat[:256] = np.arange(256)  # every value
        got = Image(a).to_tensor()
        t = torch.tensor(a)
        t = t[None, ..., None] if a.ndim == 2 else t[None] if a.ndim == 3 else t
        want = t.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        assert got.dtype == torch.float32 and torch.equal(got, want)
        assert torch.equal(Image(torch.from_numpy(a)).to_tensor(), got)  # the tensor path agrees
        assert Image(a).is_uint8 and Image(torch.from_numpy(a)).is_uint8
    assert not Image(np.zeros((4, 4, 3), np.float32)).is_uint8
    assert not Image(np.zeros((3, 4, 4), np.uint8), latent=True).is_uint8


def test_layout_index_gathers_every_field():
    doc, _ = _text_image_text()
    lay = pack([doc], patch_dim=2).layout
    idx = torch.tensor([[0, 5, 36]])
    sub = lay.index(idx)
    assert sub.shape == (1, 3)
    assert sub.unit[0].tolist() == [lay.unit[0, i].item() for i in (0, 5, 36)]
    assert sub.noisy[0].tolist() == [lay.noisy[0, i].item() for i in (0, 5, 36)]
    assert torch.equal(sub.pos[0], lay.pos[0, [0, 5, 36]])
    assert sub.block[0].tolist() == [-1, 0, -1]


# ---------------------------------------------------------------------------------------------
# ModelConfig validation


def test_config_from_dict_unknown_key_names_it():
    with pytest.raises(KeyError, match="hiden_dim"):
        ModelConfig.from_dict({"dim": 64, "hiden_dim": 3})
    with pytest.raises(KeyError, match="my.json"):
        ModelConfig.from_dict({"nope": 1}, source="my.json")


@pytest.mark.parametrize(
    "key,value",
    [
        ("dim", "256"),
        ("dim", 256.0),
        ("depth", True),
        ("qkv_bias", 1),
        ("mlp_ratio", "four"),  # a numeric string is read as YAML 1.1 reads 1e-3: a float
        ("mlp", 3),
        ("vocab_size", None),
        ("rope_sections", "16,24,24"),
        ("rope_sections", [16.0, 24, 24]),
        ("rope_theta", ["a", 1.0, 1.0]),
    ],
)
def test_config_ill_typed_value_names_the_field(key, value):
    with pytest.raises(TypeError, match=rf"ModelConfig\.{key}\b"):
        ModelConfig.from_dict({key: value})


def test_config_int_for_float_is_accepted_and_converted():
    cfg = ModelConfig(mlp_ratio=4, rope_theta=[100, 100, 100])
    assert isinstance(cfg.mlp_ratio, float) and cfg.mlp_ratio == 4.0
    assert all(isinstance(v, float) for v in cfg.rope_theta)
    cfg = ModelConfig.from_dict({"rope_sections": (16, 24, 24), "dim": 128, "heads": 2})
    assert cfg.rope_sections == [16, 24, 24]


@pytest.mark.parametrize(
    "key,value",
    [
        ("mlp", "relu"),
        ("diffusion", "score"),
        ("attention", "sdpa"),
        ("rope", "yarn"),
        ("block_kind", "squares"),
        ("depth", 0),
        ("heads", 3),  # 256 % 3 != 0
        ("rope_sections", [16, 16, 16]),  # does not sum to head_dim 64
        ("rope_theta", [1.0, 2.0]),
        ("patch_size", 3),  # does not divide image_size 16
        ("block_size", 3),  # tiles of 3 do not divide the 8x8 patch grid
    ],
)
def test_config_bad_choice_is_value_error_naming_the_field(key, value):
    with pytest.raises(ValueError, match=key if key != "block_size" else "tiles of 3x3"):
        ModelConfig.from_dict({key: value})


@pytest.mark.parametrize("sections", [[15, 25, 24], [-2, 34, 32]])
def test_config_odd_or_negative_rope_sections_rejected_at_construction(sections):
    """The config's own message promises '3 even sizes'; they must not get past the config to the model."""
    with pytest.raises(ValueError, match="rope_sections"):
        ModelConfig(dim=128, heads=2, rope_sections=sections)


def test_config_presets_and_round_trip(tmp_path):
    with pytest.raises(KeyError, match="acdit-xxl"):
        ModelConfig.from_preset("acdit-xxl")
    for name in PRESETS:
        cfg = ModelConfig.from_preset(name)
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    xl = ModelConfig.from_preset("acdit-xl")
    assert (xl.dim, xl.depth, xl.heads, xl.head_dim) == (1152, 28, 18, 64)
    assert xl.rope_sections == [0, 32, 32] and xl.rope_theta == [10000.0, 100.0, 100.0]  # the paper's 2-D split
    assert ModelConfig.from_preset("micro", depth=3).depth == 3
    with pytest.raises(KeyError, match="bogus"):
        ModelConfig.from_preset("micro", bogus=1)
    p = tmp_path / "c.json"
    xl.save(p)
    assert ModelConfig.load(p) == xl


def test_several_noisy_copies_have_their_own_block_entries():
    """noisy_copies=3: streams 1..3 after each clean block, same positions and clean patches; copy c
    of block j uses entry (c - 1) * N + j, so each copy draws its own t; the images map to the
    first N entries."""
    doc, seg = _text_image_text()
    b = pack([doc], patch_dim=2, noisy_copies=3)
    lay = b.layout
    n = 4
    assert b.block_label.numel() == 3 * n and b.block_doc.tolist() == [0] * (3 * n)
    assert b.images == [(0, 0, seg.grid)]
    for j in range(n):
        clean = (lay.unit[0] == 3 + j) & (lay.stream[0] == 0)
        for c in (1, 2, 3):
            copy = (lay.unit[0] == 3 + j) & (lay.stream[0] == c)
            assert copy.sum() == 4
            assert torch.equal(lay.pos[0][clean], lay.pos[0][copy])
            assert lay.block[0][copy].tolist() == [(c - 1) * n + j] * 4
            assert torch.equal(b.patches[0][copy], seg.tokens[j])
    assert int(lay.noisy.sum()) == 3 * 16 and lay.shape[1] == 5 + 4 * 16
    with pytest.raises(ValueError, match="noisy_copies"):
        pack([doc], patch_dim=2, noisy_copies=0)


def _reference_pack(docs: list[EncodedDoc], row_len: int | None, copies: int, with_noisy: bool = True) -> dict:
    """Every field of `pack`, token by token from the rules of the `Layout` docstring: an
    independent reference for the batch-wide numpy build."""
    toks = []  # per document: the tokens of its rows, each a dict of fields
    entries = []
    for d, doc in enumerate(docs):
        n_doc = sum(s.tokens.shape[0] for s in doc.segments if isinstance(s, VisualSegment))
        out, unit, index, blocks = [], 0, 0, 0
        for seg in doc.segments:
            if isinstance(seg, VisualSegment):
                n, b, _ = seg.tokens.shape
                for j in range(n):
                    for c in range(copies + 1 if with_noisy and seg.noisy else 1):
                        for k in range(b):
                            out.append(
                                dict(doc=d, unit=unit + j, stream=c, modality=VISUAL,
                                     pos=(seg.pos[j, k] + index).tolist(), block=blocks + j + max(c - 1, 0) * n_doc,
                                     origin=index, token=0, patch=seg.tokens[j, k])
                            )  # fmt: skip
                unit, index, blocks = unit + n, index + max(seg.grid), blocks + n
            else:
                for i in seg:
                    out.append(
                        dict(doc=d, unit=unit, stream=0, modality=TEXT, pos=[index] * 3, block=-1, origin=0, token=i)
                    )
                    unit, index = unit + 1, index + 1
        toks.append(out)
        entries.append(n_doc * (copies if with_noisy and copies > 1 else 1))
    rows: list[list[int]] = []
    for d, t in enumerate(toks):  # first fit
        fits = [r for r in rows if row_len is not None and sum(len(toks[e]) for e in r) + len(t) <= row_len]
        fits[0].append(d) if fits else rows.append([d])
    first, table, cells = {}, [], []
    for r in rows:
        row = []
        for d in r:
            first[d] = len(table)
            table += [(docs[d].label if docs[d].label is not None else -1, d)] * entries[d]
            row += [{**t, "block": t["block"] + first[d] if t["block"] >= 0 else -1} for t in toks[d]]
        for i, t in enumerate(row):  # a text token predicts the next token of its document if it is text
            nxt = row[i + 1] if i + 1 < len(row) else None
            text_next = t["modality"] == TEXT and nxt is not None and nxt["modality"] == TEXT and nxt["doc"] == t["doc"]
            t["target"] = nxt["token"] if text_next else IGNORE
        cells.append(row)
    return {"rows": cells, "table": table, "first": first}


@pytest.mark.parametrize("copies,rows,with_noisy", [(1, 1.0, True), (3, 1.5, True), (2, None, True), (2, 2.0, False)])
def test_pack_matches_a_token_by_token_reference(copies, rows, with_noisy):
    """Random documents (text runs, empty runs, images and clips of several grids and block kinds,
    context-only images, labels) packed into rows of `rows` x the longest document (None: one a
    row), against the token-by-token reference; padding elsewhere."""
    rng = np.random.default_rng(copies)
    specs = [BlockSpec("tiles", 1), TILE2, BlockSpec("rows", 2), BlockSpec("frames", 1)]
    docs = []
    for i in range(9):
        segs: list = []
        for k in range(int(rng.integers(1, 4))):
            if rng.random() < 0.5:
                segs.append([int(v) for v in rng.integers(3, 50, int(rng.integers(0, 5)))])
            else:
                spec = specs[int(rng.integers(len(specs)))]
                seg = _seg(int(rng.integers(1, 3)), 2 + 2 * int(rng.integers(0, 2)), 4, spec, seed=10 * i + k)
                seg.noisy = bool(rng.random() < 0.7)
                segs.append(seg)
        docs.append(EncodedDoc(segs, label=int(rng.integers(5)) if rng.random() < 0.5 else None))
    longest = max(len(r) for r in _reference_pack(docs, None, copies, with_noisy)["rows"])
    row_len = None if rows is None else int(rows * longest)
    ref = _reference_pack(docs, row_len, copies, with_noisy)
    assert rows is None or len(ref["rows"]) < len(docs)  # documents share rows
    b = pack(docs, patch_dim=2, row_len=row_len, noisy_copies=copies, with_noisy=with_noisy)
    lay = b.layout
    assert lay.shape[0] == len(ref["rows"])
    assert lay.shape[1] == (row_len if row_len is not None else max(len(r) for r in ref["rows"]))
    for r, row in enumerate(ref["rows"]):
        n = len(row)
        for f in ("doc", "unit", "stream", "modality", "block", "origin", "token", "target"):
            got = {"token": b.tokens, "target": b.text_targets}.get(f, getattr(lay, f, None))
            assert got[r, :n].tolist() == [t[f] for t in row], f
        assert lay.pos[r, :n].tolist() == [t["pos"] for t in row]
        vis = [t["patch"] for t in row if t["modality"] == VISUAL]
        assert torch.equal(
            b.patches[r, :n][lay.modality[r, :n] == VISUAL], torch.stack(vis) if vis else torch.zeros(0, 2)
        )
        assert (lay.modality[r, n:] == PAD).all() and (lay.doc[r, n:] == -1).all() and (lay.block[r, n:] == -1).all()
        assert (
            (b.patches[r, n:] == 0).all() and (b.text_targets[r, n:] == IGNORE).all() and (b.tokens[r, n:] == 0).all()
        )
    assert b.block_label.tolist() == [lab for lab, _ in ref["table"]]
    assert b.block_doc.tolist() == [d for _, d in ref["table"]]
    order = [d for row in ref["rows"] for d in dict.fromkeys(t["doc"] for t in row)]
    images, seen = [], set()
    for d in order + [d for d in range(len(docs)) if d not in order]:  # documents without tokens hold no image
        if d in seen:
            continue
        seen.add(d)
        first = ref["first"].get(d, 0)
        for seg in docs[d].segments:
            if isinstance(seg, VisualSegment):
                images.append((d, first, seg.grid))
                first += seg.tokens.shape[0]
    assert b.images == images


def test_pack_of_nothing_and_of_empty_documents():
    """No documents: an empty batch; a document without tokens takes no place in its row."""
    b = pack([], patch_dim=2)
    assert b.layout.shape[0] == 0 and b.block_label.numel() == 0 and b.images == []
    b = pack([EncodedDoc([[5, 6]]), EncodedDoc([[]]), EncodedDoc([[7]])], patch_dim=2, row_len=4)
    assert b.layout.doc.tolist() == [[0, 0, 2, -1]] and b.tokens.tolist() == [[5, 6, 7, 0]]
    assert b.text_targets.tolist() == [[6, IGNORE, IGNORE, IGNORE]]
