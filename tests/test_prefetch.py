"""The background batch builder: the stream's batches in order, and a state of the batches consumed."""

import time
from pathlib import Path

import pytest
import torch

from unimodal import ModelConfig
from unimodal.data.pipeline import batch_stream
from unimodal.data.prefetch import Prefetcher
from unimodal.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
CFG = {"builtin": "shapes", "task": "scenes", "n": 200, "batch_size": 4}


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load(ROOT / "tokenizers_cfg" / "shapes")


def stream(tok, cfg=CFG):
    mc = ModelConfig.from_preset("micro", vocab_size=tok.vocab_size, image_size=32, patch_size=4, block_size=2)
    return batch_stream(cfg, tok, mc)


def same(a, b) -> bool:
    fields = ("doc", "unit", "stream", "modality", "pos", "block", "origin")
    return all(torch.equal(getattr(a.layout, k), getattr(b.layout, k)) for k in fields) and all(
        torch.equal(getattr(a, k), getattr(b, k)) for k in ("tokens", "patches", "text_targets", "doc_keys")
    )


def wait_until(cond, timeout: float = 30.0) -> None:
    """Wait for the thread to have built ahead, so the checks below see a stream that ran ahead."""
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "the prefetch thread did not build ahead"
        time.sleep(0.005)


def test_same_batches_and_a_state_of_what_was_consumed(tok):
    plain, ahead = stream(tok), Prefetcher(stream(tok), depth=3)
    for _ in range(5):
        assert same(next(ahead), next(plain))
        wait_until(lambda: ahead.stream.batches >= ahead.batches + 3)
        # the thread has built 3 batches more, but the state is that of the batches taken
        assert ahead.batches == plain.batches and ahead.state_dict() == plain.state_dict()
        assert ahead.skipped() == plain.skipped()
    state = ahead.state_dict()
    ahead.close()
    resumed = Prefetcher(stream(tok), depth=2)
    resumed.load_state_dict(state)
    later = [next(plain) for _ in range(3)]
    assert all(same(next(resumed), b) for b in later)
    resumed.close()


def test_close_and_load_state_rewind_to_the_consumed_batches(tok):
    ahead, plain = Prefetcher(stream(tok), depth=4), stream(tok)
    first = [next(ahead) for _ in range(2)]
    assert all(same(a, next(plain)) for a in first)
    wait_until(lambda: ahead.stream.batches >= 6)
    ahead.close()  # the stream had run ahead; closing takes it back
    assert ahead.stream.batches == 2
    assert same(next(ahead), next(plain))  # iterating again restarts the thread where it was
    ahead.load_state_dict(stream(tok).state_dict())  # back to the start
    assert same(next(ahead), next(stream(tok)))
    ahead.close()


def test_a_build_error_is_raised_by_the_call_that_wanted_the_batch(tok, monkeypatch):
    s = stream(tok)
    calls = {"n": 0}
    build = type(s).__next__

    def failing(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise ValueError("record 7 of shapes: field 'image': bad")
        return build(self)

    monkeypatch.setattr(type(s), "__next__", failing)
    ahead, plain = Prefetcher(s, depth=2), stream(tok)
    assert same(next(ahead), build(plain)) and same(next(ahead), build(plain))
    with pytest.raises(ValueError, match="record 7"):
        next(ahead)
    assert ahead.batches == 2 and s.batches == 2  # nothing consumed or lost: asked again, it builds batch 3
    assert same(next(ahead), build(plain))
    ahead.close()


def test_depth_must_be_positive(tok):
    with pytest.raises(ValueError, match="depth"):
        Prefetcher(stream(tok), depth=0)
