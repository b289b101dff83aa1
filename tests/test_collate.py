"""Collation: documents -> batches -> documents, order mixing, prompt dropout, buckets, bad records."""

from pathlib import Path

import numpy as np
import pytest
import torch

from unimodal import Document, Image, ModelConfig, Text
from unimodal.data import load_builtin
from unimodal.data.collate import CollateConfig, Collator
from unimodal.data.errors import BadRecord
from unimodal.layout import IGNORE, TEXT
from unimodal.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load(ROOT / "tokenizers_cfg" / "shapes")


def cfg16():
    return ModelConfig.from_preset("micro", image_size=16, patch_size=2, block_size=4, vocab_size=512)


def clean_tokens(batch, row=0):
    lay = batch.layout
    keep = (lay.doc[row] >= 0) & ~lay.noisy[row]
    return batch.tokens[row][keep], lay.modality[row][keep]


def test_round_trip_documents(tok):
    """document -> batch -> document: text (normalised by the tokenizer) and images exactly."""
    docs = list(load_builtin("shapes", task="t2i", n=4)) + list(load_builtin("shapes", task="caption", n=2))
    col = Collator(tok, cfg16())
    back = col.decode(col(docs))
    assert len(back) == len(docs)
    for d, b in zip(docs, back, strict=True):
        assert [type(s) for s in d.segments] == [type(s) for s in b.segments]
        for s, r in zip(d.segments, b.segments, strict=True):
            if isinstance(s, Text):
                assert r.text == s.text.lower()
            else:
                assert np.array_equal(np.asarray(s.data), r.data)


def test_special_tokens_and_targets(tok):
    col = Collator(tok, cfg16())
    doc = Document([Text("a red circle"), Image(np.zeros((16, 16, 3), np.uint8)), Text("a blue square")])
    batch = col([doc])
    ids, mods = clean_tokens(batch)
    text_ids = ids[mods == TEXT].tolist()
    cap1, cap2 = tok.encode("a red circle"), tok.encode("a blue square")
    assert text_ids == [tok.bos_id, *cap1, tok.boi_id, tok.eoi_id, *cap2, tok.eos_id]
    lay = batch.layout
    tgt = batch.text_targets[0][(lay.doc[0] >= 0) & ~lay.noisy[0] & (lay.modality[0] == TEXT)].tolist()
    # bos predicts the caption, the caption predicts <boi>; <boi> is followed by the image: no target;
    # <eoi> predicts the next caption, which ends with <eos>; <eos> has no target
    assert tgt == [*cap1, tok.boi_id, IGNORE, *cap2, tok.eos_id, IGNORE]


def test_image_first_rate_and_determinism(tok):
    docs = list(load_builtin("shapes", task="t2i", n=64))
    col = Collator(tok, cfg16(), CollateConfig(image_first_rate=0.5))

    def first_is_image(batch):
        out = []
        for r in range(batch.layout.shape[0]):
            ids, mods = clean_tokens(batch, r)
            out.append(int(ids[1]) == tok.boi_id)  # <bos> <boi> ...: the image comes first
        return out

    a = first_is_image(col(docs, np.random.default_rng(1)))
    b = first_is_image(col(docs, np.random.default_rng(1)))
    assert a == b and 16 < sum(a) < 48
    assert (
        sum(first_is_image(Collator(tok, cfg16(), CollateConfig(image_first_rate=1.0))(docs, np.random.default_rng(0))))
        == 64
    )
    assert sum(first_is_image(col(docs))) == 0  # no generator: no random choices, documents as given


def test_image_first_pairs_can_train_captioning_only(tok):
    """image_first_diffusion=False: a swapped pair's image is context only (no noisy copy), the
    other pairs keep theirs; the clean tokens and the text targets are those of the default."""
    docs = list(load_builtin("shapes", task="t2i", n=32))
    both = Collator(tok, cfg16(), CollateConfig(image_first_rate=0.5))(docs, np.random.default_rng(2))
    cap = Collator(tok, cfg16(), CollateConfig(image_first_rate=0.5, image_first_diffusion=False))
    only = cap(docs, np.random.default_rng(2))
    for r in range(len(docs)):
        ids, mods = clean_tokens(only, r)
        assert torch.equal(ids, clean_tokens(both, r)[0])
        image_first = int(ids[1]) == tok.boi_id
        assert int(only.layout.noisy[r].sum()) == (0 if image_first else int(both.layout.noisy[r].sum()))
        assert int(both.layout.noisy[r].sum()) == int((mods != TEXT).sum())
        real_only, real_both = only.layout.doc[r] >= 0, both.layout.doc[r] >= 0
        assert torch.equal(
            only.text_targets[r][real_only & ~only.layout.noisy[r]],
            both.text_targets[r][real_both & ~both.layout.noisy[r]],
        )
    assert 0 < int(only.layout.noisy.any(1).sum()) < len(docs)


def test_noisy_copies_in_packed_rows(tok):
    """noisy_copies=2 with packed rows: every generated block has two noisy copies, the clean
    tokens and text targets stay those of one copy, rows are filled by the right lengths, and a bad
    value names the key."""
    docs = list(load_builtin("shapes", task="t2i", n=16))
    one = Collator(tok, cfg16(), CollateConfig(pack_rows=256))(docs, np.random.default_rng(0))
    col = Collator(tok, cfg16(), CollateConfig(pack_rows=256, noisy_copies=2))
    two = col(docs, np.random.default_rng(0))
    assert int(two.layout.noisy.sum()) == 2 * int(one.layout.noisy.sum())
    assert set(two.layout.stream.unique().tolist()) == {0, 1, 2}
    assert torch.equal(two.text_targets[two.text_targets != IGNORE], one.text_targets[one.text_targets != IGNORE])
    lengths = [col.doc_length(col.encode(d, np.random.default_rng(0))) for d in docs]
    assert sum(lengths) == int((two.layout.doc >= 0).sum()) and two.layout.shape[1] == 256
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="noisy_copies"):
            CollateConfig(noisy_copies=bad)


def test_prompt_dropout_uses_the_null_token(tok):
    docs = list(load_builtin("shapes", task="t2i", n=8))
    col = Collator(tok, cfg16(), CollateConfig(prompt_dropout=1.0))
    batch = col(docs, np.random.default_rng(0))
    for r in range(8):
        ids, mods = clean_tokens(batch, r)
        assert ids[mods == TEXT].tolist() == [tok.bos_id, tok.null_id, tok.boi_id, tok.eoi_id, tok.eos_id]
    assert not (batch.text_targets == tok.null_id).any()
    # text after the image is not a prompt and is kept
    cap = Document([Image(np.zeros((16, 16, 3), np.uint8)), Text("a red circle")])
    ids, mods = clean_tokens(col([cap], np.random.default_rng(0)))
    assert tok.null_id not in ids.tolist()


def test_label_dropout():
    from unimodal.data.digits import DigitsDataset

    tok = Tokenizer.load(ROOT / "tokenizers_cfg" / "digits")
    cfg = ModelConfig.from_preset("micro", channels=1, num_classes=10, vocab_size=tok.vocab_size)
    docs = list(DigitsDataset("test", n=64))
    keep = Collator(tok, cfg)(docs, np.random.default_rng(0))
    assert (keep.block_label >= 0).all()
    half = Collator(tok, cfg, CollateConfig(label_dropout=0.5))(docs, np.random.default_rng(0))
    dropped = (half.block_label < 0).float().mean().item()
    assert 0.25 < dropped < 0.75
    per_doc = {int(d): set(half.block_label[half.block_doc == d].tolist()) for d in half.block_doc.unique()}
    assert all(len(v) == 1 for v in per_doc.values())  # a document's blocks share its label


def test_buckets(tok):
    docs = list(load_builtin("shapes", task="t2i", n=4))
    col = Collator(tok, cfg16(), CollateConfig(buckets=[64, 160, 320]))
    batch = col(docs)
    longest = max(col.doc_length(col.encode(d)) for d in docs)
    expected = next(b for b in (64, 160, 320) if longest <= b)
    assert batch.layout.shape[1] == expected and expected > longest - 1
    short = Collator(tok, cfg16(), CollateConfig(buckets=[longest, 2 * longest]))
    assert short(docs).layout.shape[1] == longest
    with pytest.raises(ValueError, match="increasing"):
        CollateConfig(buckets=[64, 32])


@pytest.mark.parametrize(
    "doc, field, reason",
    [
        (Document([Text(""), Image(np.zeros((16, 16, 3), np.uint8))]), "segments[0].text", "empty text"),
        (Document([Text("a"), Image(np.full((16, 16, 3), np.nan, np.float32))]), "segments[1].image", "NaN"),
        (Document([Text("a"), Image(np.zeros((15, 16, 3), np.uint8))]), "segments[1].image", "wrong size"),
        (Document([Text("a"), Image(np.zeros((16, 16), np.uint8))]), "segments[1].image", "channels"),
        (Document([Text("a " * 400), Image(np.zeros((16, 16, 3), np.uint8))]), "segments", "longer than the context"),
    ],
    ids=["empty-text", "nan", "wrong-size", "grey-for-rgb-model", "too-long"],
)
def test_bad_records_raise_or_skip(tok, doc, field, reason):
    good = list(load_builtin("shapes", task="t2i", n=2))
    doc.meta.update(dataset="mine", index=7)
    raising = Collator(tok, cfg16(), CollateConfig(buckets=[320]))
    with pytest.raises(BadRecord) as e:
        raising([good[0], doc, good[1]])
    msg = str(e.value)
    assert "'mine'" in msg and "record 7" in msg and field in msg and reason in msg
    skipping = Collator(tok, cfg16(), CollateConfig(buckets=[320], on_bad_record="skip"))
    batch = skipping([good[0], doc, good[1]])
    assert batch.layout.shape[0] == 2 and skipping.policy.total == 1
    assert skipping.decode(batch)[1].segments[0].text == good[1].segments[0].text.lower()
    with pytest.raises(ValueError, match="every document"):
        skipping([doc])


def test_digits_documents():
    from unimodal.data.digits import DigitsDataset, split_indices

    train, test = DigitsDataset("train"), DigitsDataset("test")
    assert (len(train), len(test)) == (1437, 360)
    assert not set(split_indices("train")) & set(split_indices("test"))
    d = test[0]
    assert (
        d.segments[0].text
        == f"a handwritten {['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine'][d.label]}"
    )
    img = d.segments[1].data
    assert img.shape == (8, 8) and img.dtype == np.uint8
    images, labels = train.arrays()
    assert len(np.unique(images)) == 17 and sorted(np.unique(labels)) == list(range(10))
    assert load_builtin("digits", split="test", n=5)[4].meta == DigitsDataset("test")[4].meta
    with pytest.raises(KeyError, match="unknown built-in"):
        load_builtin("mnist")


def test_class_only_model_without_tokenizer():
    """The paper's setting (vocab 0, class labels through AdaLN): text is dropped, no specials, and
    the batch trains through the losses."""
    from unimodal import UnifiedModel
    from unimodal.data.digits import DigitsDataset
    from unimodal.diffusion import Diffusion, losses

    cfg = ModelConfig.from_preset("micro", channels=1, num_classes=10, vocab_size=0)
    docs = list(DigitsDataset("test", n=4))
    batch = Collator(None, cfg)(docs, np.random.default_rng(0))
    assert (batch.layout.modality[batch.layout.doc >= 0] == 1).all()  # visual tokens only
    assert batch.block_label.tolist()[:: len(batch.block_label) // 4] == [d.label for d in docs]
    out = losses(UnifiedModel(cfg), batch, Diffusion("flow"))
    assert torch.isfinite(out["loss"]) and out["text_count"] == 0
