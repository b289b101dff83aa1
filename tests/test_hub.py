"""Saving and loading: safetensors + config + tokenizer round trip; pickle refused by default."""

from pathlib import Path

import numpy as np
import pytest
import torch

from unimodal import Document, Image, ModelConfig, Text, UnifiedModel
from unimodal.diffusion import Diffusion, noise_batch
from unimodal.hub import load_pretrained, save_pretrained
from unimodal.layout import encode_document, pack
from unimodal.tokenizer import Tokenizer

SHAPES_TOKENIZER = Path(__file__).resolve().parents[1] / "tokenizers_cfg" / "shapes"


def outputs(model, batch, seed=0):
    nb = noise_batch(batch, Diffusion(model.cfg.diffusion), torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(batch.tokens, nb.patches, batch.layout, t=nb.t, labels=batch.block_label)


def test_round_trip_gives_identical_outputs(tmp_path):
    cfg = ModelConfig.from_preset("micro", num_classes=3)
    model = UnifiedModel(cfg).eval()
    with torch.no_grad():  # random weights everywhere, so every parameter matters
        for p in model.parameters():
            p.normal_(0, 0.2)
    tok = Tokenizer.load(SHAPES_TOKENIZER)
    save_pretrained(model, tmp_path / "m", tokenizer=tok)
    loaded, tok2 = load_pretrained(tmp_path / "m")
    doc = Document([Text(ids=[1, 2]), Image(np.random.default_rng(0).integers(0, 256, (8, 8, 3), np.uint8))], label=2)
    batch = pack([encode_document(doc, cfg.patch_size, cfg.block_spec)], cfg.patch_dim)
    a, b = outputs(model, batch), outputs(loaded.eval(), batch)
    assert torch.equal(a.pred, b.pred) and torch.equal(a.text_logits, b.text_logits)
    assert loaded.cfg == cfg
    assert tok2.specials == tok.specials and tok2.encode("a red circle") == tok.encode("a red circle")
    assert isinstance(UnifiedModel.from_pretrained(tmp_path / "m"), UnifiedModel)


def test_pickle_refused_unless_allowed(tmp_path):
    cfg = ModelConfig.from_preset("micro")
    model = UnifiedModel(cfg)
    d = tmp_path / "p"
    d.mkdir()
    cfg.save(d / "config.json")
    torch.save({"model": model.state_dict()}, d / "checkpoint.pt")
    with pytest.raises(ValueError, match="pickle"):
        load_pretrained(d)
    loaded, tok = load_pretrained(d, allow_pickle=True)
    assert tok is None
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_pickle_with_code_is_rejected_even_when_allowed(tmp_path):
    """weights_only=True: a pickle that would construct arbitrary objects does not load."""
    d = tmp_path / "evil"
    d.mkdir()
    ModelConfig.from_preset("micro").save(d / "config.json")

    class Payload:
        def __reduce__(self):
            return (print, ("this would have run",))

    torch.save({"model": Payload()}, d / "model.bin")
    with pytest.raises(Exception, match="[Ww]eights only|weights_only"):
        load_pretrained(d, allow_pickle=True)


def test_missing_files_and_mismatched_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path)
    small = UnifiedModel(ModelConfig.from_preset("micro"))
    save_pretrained(small, tmp_path / "m")
    ModelConfig.from_preset("micro", depth=3).save(tmp_path / "m" / "config.json")
    with pytest.raises(KeyError, match="missing"):
        load_pretrained(tmp_path / "m")
