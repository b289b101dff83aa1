"""Perturbation tests of the attention rule through the whole training forward (ARCHITECTURE.md §2).

A small random `UnifiedModel` runs the full training sequence (clean and noisy streams, several
documents packed per row). Changing one input at a time and watching which hidden states move
checks the information flow the rule promises:

- a noisy block sees clean units strictly before it and itself; nothing sees a noisy token;
- text after an image sees the image's clean copy only;
- the timestep of a block reaches that block's noisy tokens only;
- documents packed in one row never see each other.

"Unchanged" is exact (`torch.equal`, fp32 on CPU): a masked key contributes an exact zero, and
clean tokens get an exact identity modulation. "Changed" means every token of the set moves by
more than `CHANGED` (hidden states here are O(1)).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unimodal import Document, Image, ModelConfig, Text, UnifiedModel
from unimodal.layout import TEXT, encode_document, pack
from unimodal.patches import BlockSpec

CHANGED = 1e-4  # a token counts as changed when some hidden feature moves by more than this
PATCH = 2
SPEC = BlockSpec("tiles", 2)


def _documents() -> list[Document]:
    rng = np.random.default_rng(0)

    def img(h: int, w: int) -> Image:
        return Image(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))

    return [
        Document([Text(ids=[3, 4, 5, 6]), img(8, 8), Text(ids=[7, 8, 9])]),  # text -> image -> text
        Document([img(8, 8)]),  # image only
        Document([Text(ids=[10, 11, 12, 13, 14])]),  # text only
        Document([Text(ids=[15, 16]), img(4, 8), Text(ids=[17, 18]), img(8, 8), Text(ids=[19, 20])]),
    ]


def _randomize(model: torch.nn.Module, g: torch.Generator) -> None:
    """Overwrite every parameter: the model zero-initialises AdaLN and its output layers, which
    would leave noisy tokens unmodulated. Matrices ~ N(0, 1/fan_in), vectors ~ N(0, 0.2^2)."""
    with torch.no_grad():
        for p in model.parameters():
            std = p.shape[-1] ** -0.5 if p.dim() >= 2 else 0.2
            p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("micro", depth=2, attention="dense")
    model = UnifiedModel(cfg).eval()
    g = torch.Generator().manual_seed(1)
    _randomize(model, g)
    enc = [encode_document(d, PATCH, SPEC) for d in _documents()]
    batch = pack(enc, cfg.patch_dim, row_len=100)
    lay = batch.layout
    assert lay.shape[0] == 2 and (lay.doc[:, -1] == -1).all(), "expected two rows, both padded"
    patches = batch.patches.clone()
    patches[lay.noisy] = torch.randn(patches[lay.noisy].shape, generator=g)
    t = torch.rand(batch.block_label.numel(), generator=g)
    return model, enc, batch, patches, t


def _run(model, tokens, patches, layout, t):
    with torch.no_grad():
        return model(tokens, patches, layout, t=t, labels=None)


def _token_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-token max abs difference of two (R, L, dim) hidden states."""
    return (a - b).abs().amax(-1)


def _assert_unchanged(new, ref, mask, what, allow_empty=False):
    assert allow_empty or mask.any(), f"test is vacuous: no tokens in {what}"
    assert torch.equal(new.hidden[mask], ref.hidden[mask]), (
        f"{what} changed: max diff {_token_diff(new.hidden, ref.hidden)[mask].max().item():.3g}"
    )


def _assert_changed(new, ref, mask, what):
    assert mask.any(), f"test is vacuous: no tokens in {what}"
    d = _token_diff(new.hidden, ref.hidden)[mask]
    assert (d > CHANGED).all(), f"{what} did not change: per-token max diffs {d.tolist()}"


def test_reference_forward_is_sane(setup):
    model, _, batch, patches, t = setup
    out = _run(model, batch.tokens, patches, batch.layout, t)
    lay = batch.layout
    assert out.hidden.shape == (*lay.shape, model.cfg.dim)
    assert torch.isfinite(out.hidden).all()
    assert out.pred.shape == (int(lay.noisy.sum()), model.cfg.patch_dim)
    assert out.text_logits.shape[0] == int(((lay.modality == TEXT) & ~lay.noisy).sum())
    # the modulation is really random (not the zero init), so noisy tokens depend on t
    assert model.blocks[0].adaLN_modulation[-1].weight.abs().sum() > 0
    # determinism
    assert torch.equal(out.hidden, _run(model, batch.tokens, patches, lay, t).hidden)


def test_noisy_token_changes_only_its_own_block(setup):
    """(a) A noisy token is seen by its own noisy block only: no clean token, no other block."""
    model, _, batch, patches, t = setup
    lay = batch.layout
    ref = _run(model, batch.tokens, patches, lay, t)
    g = torch.Generator().manual_seed(2)
    for b in range(batch.block_label.numel()):
        own = lay.noisy & (lay.block == b)
        r, i = own.nonzero()[-1].tolist()  # last token: every token of the block must see it
        p2 = patches.clone()
        p2[r, i] += torch.randn(p2.shape[-1], generator=g)
        new = _run(model, batch.tokens, p2, lay, t)
        _assert_changed(new, ref, own, f"noisy block {b} (its own token was changed)")
        _assert_unchanged(new, ref, ~own, f"tokens outside noisy block {b}")
        _assert_unchanged(new, ref, ~lay.noisy, f"clean stream after changing noisy block {b}")
        others = lay.block[lay.noisy] != b
        assert torch.equal(new.pred[others], ref.pred[others]), f"pred of blocks other than {b} changed"
        assert torch.equal(new.text_logits, ref.text_logits)


def test_clean_block_conditions_later_noisy_blocks_only(setup):
    """(b) Clean block j reaches noisy blocks with unit > j of its document; not its own noisy copy,
    not earlier noisy blocks, not other documents."""
    model, _, batch, patches, t = setup
    lay = batch.layout
    ref = _run(model, batch.tokens, patches, lay, t)
    g = torch.Generator().manual_seed(3)
    n_later = 0
    for j in range(batch.block_label.numel()):
        clean_j = ~lay.noisy & (lay.block == j)
        doc = int(batch.block_doc[j])
        unit = int(lay.unit[clean_j][0])
        same_doc = lay.doc == doc
        p2 = patches.clone()
        p2[clean_j] += torch.randn(p2[clean_j].shape, generator=g)
        new = _run(model, batch.tokens, p2, lay, t)
        later_noisy = lay.noisy & same_doc & (lay.unit > unit)
        if later_noisy.any():
            n_later += 1
            _assert_changed(new, ref, later_noisy, f"noisy blocks after clean block {j}")
        up_to_j = lay.noisy & same_doc & (lay.unit <= unit)
        _assert_unchanged(new, ref, up_to_j, f"noisy blocks up to block {j}")
        _assert_unchanged(new, ref, lay.noisy & (lay.block == j), f"noisy copy of block {j}")
        _assert_unchanged(new, ref, ~same_doc, f"other documents than block {j}'s")
        earlier_clean = same_doc & ~lay.noisy & (lay.unit < unit)
        _assert_unchanged(new, ref, earlier_clean, f"clean units before block {j}", allow_empty=True)
        _assert_changed(new, ref, clean_j, f"clean block {j} itself")
    assert n_later >= 4


def test_text_after_image_sees_clean_copy_only(setup):
    """(c) Text after an image depends on its clean blocks, never on the noisy copies or on t."""
    model, _, batch, patches, t = setup
    lay = batch.layout
    text = (lay.modality == TEXT) & ~lay.noisy
    ref = _run(model, batch.tokens, patches, lay, t)
    g = torch.Generator().manual_seed(4)

    # every clean block moves every later text token of its document, and no earlier one
    n_checked = 0
    for j in range(batch.block_label.numel()):
        clean_j = ~lay.noisy & (lay.block == j)
        same_doc = lay.doc == int(batch.block_doc[j])
        unit = int(lay.unit[clean_j][0])
        p2 = patches.clone()
        p2[clean_j] += torch.randn(p2[clean_j].shape, generator=g)
        new = _run(model, batch.tokens, p2, lay, t)
        later_text = text & same_doc & (lay.unit > unit)
        if later_text.any():
            n_checked += 1
            _assert_changed(new, ref, later_text, f"text after clean block {j}")
        _assert_unchanged(new, ref, text & ~(same_doc & (lay.unit > unit)), f"text not after clean block {j}")
    assert n_checked >= 4

    # all noisy inputs and all timesteps changed at once: every clean token is bit-identical
    p2 = patches.clone()
    p2[lay.noisy] = torch.randn(p2[lay.noisy].shape, generator=g)
    t2 = torch.rand(t.shape, generator=g)
    for name, pp, tt in (("noisy patches", p2, t), ("timesteps", patches, t2), ("both", p2, t2)):
        new = _run(model, batch.tokens, pp, lay, tt)
        _assert_unchanged(new, ref, text, f"text hidden states after changing {name}")
        _assert_unchanged(new, ref, ~lay.noisy, f"clean stream after changing {name}")
        assert torch.equal(new.text_logits, ref.text_logits), f"text logits changed with {name}"
        _assert_changed(new, ref, lay.noisy, f"noisy tokens after changing {name}")


def test_packed_documents_are_independent(setup):
    """(d) Changing everything about one document (text ids, clean and noisy patches, timesteps)
    leaves every other document in the batch bit-identical; and each document's outputs equal those
    of the document packed alone."""
    model, enc, batch, patches, t = setup
    lay = batch.layout
    ref = _run(model, batch.tokens, patches, lay, t)
    g = torch.Generator().manual_seed(5)
    for d in range(len(enc)):
        mine = lay.doc == d
        tok2 = batch.tokens.clone()
        is_text = mine & (lay.modality == TEXT)
        tok2[is_text] = (tok2[is_text] + 1 + torch.randint(0, 50, tok2[is_text].shape, generator=g)) % 64
        p2 = patches.clone()
        vis = mine & (lay.block >= 0)
        p2[vis] += torch.randn(p2[vis].shape, generator=g)
        t2 = t.clone()
        t2[batch.block_doc == d] = torch.rand(int((batch.block_doc == d).sum()), generator=g)
        new = _run(model, tok2, p2, lay, t2)
        _assert_changed(new, ref, mine, f"document {d} itself")
        _assert_unchanged(new, ref, ~mine, f"documents other than {d}")

    # packed together == alone (different row offsets, same per-document positions)
    for d in range(len(enc)):
        alone = pack([enc[d]], model.cfg.patch_dim)
        mine = lay.doc == d
        n = int(mine.sum())
        assert alone.layout.shape[1] == n
        p_alone = patches[mine].unsqueeze(0)
        assert torch.equal(p_alone[~alone.layout.noisy], alone.patches[~alone.layout.noisy])
        out = _run(model, alone.tokens, p_alone, alone.layout, t[batch.block_doc == d])
        torch.testing.assert_close(out.hidden[0], ref.hidden[mine], atol=1e-5, rtol=1e-5)


def test_timestep_reaches_only_its_own_block(setup):
    """(e) t of block i modulates block i's noisy tokens and nothing else."""
    model, _, batch, patches, t = setup
    lay = batch.layout
    ref = _run(model, batch.tokens, patches, lay, t)
    for i in range(batch.block_label.numel()):
        own = lay.noisy & (lay.block == i)
        t2 = t.clone()
        t2[i] = (t2[i] + 0.5) % 1.0
        new = _run(model, batch.tokens, patches, lay, t2)
        _assert_changed(new, ref, own, f"noisy block {i} after changing its t")
        _assert_unchanged(new, ref, ~own, f"tokens outside noisy block {i} after changing its t")
        others = lay.block[lay.noisy] != i
        assert torch.equal(new.pred[others], ref.pred[others]), f"pred of blocks other than {i} changed"
        assert not torch.equal(new.pred[~others], ref.pred[~others])
