"""The background batch builder: the stream's batches in order, and a state of the batches consumed."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from unimodal import ModelConfig
from unimodal.data.errors import BadRecord
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


def captions_with_a_bad_record(root: Path, n: int = 24, bad: int = 13) -> dict:
    """A real jsonl of (image, caption) pairs whose record `bad` has an empty caption."""
    rows = []
    for i in range(n):
        px = np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        PILImage.fromarray(px).save(root / f"{i}.png")
        rows.append({"image": f"{i}.png", "caption": "" if i == bad else f"a small red circle {i}"})
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"source": {"format": "captions", "path": str(root / "pairs.jsonl")}, "batch_size": 4}


def test_a_build_error_is_raised_by_the_call_that_wanted_the_batch(tok, tmp_path):
    cfg = captions_with_a_bad_record(tmp_path)
    plain, good = stream(tok, cfg), []
    with pytest.raises(BadRecord, match="record 13") as expected:
        while True:
            good.append(next(plain))
    assert len(good) >= 2  # the bad record is met after some batches, not in the first
    s = stream(tok, cfg)
    ahead = Prefetcher(s, depth=2)
    assert all(same(next(ahead), b) for b in good)
    for _ in range(2):  # raised by the call that wanted that batch, as often as it is asked for
        with pytest.raises(BadRecord, match="record 13") as raised:
            next(ahead)
        assert str(raised.value) == str(expected.value)
        # nothing consumed or lost: the state is that of the good batches taken
        assert ahead.batches == len(good) and ahead.state_dict() == stream_after(tok, cfg, len(good)).state_dict()
    ahead.close()


def stream_after(tok, cfg: dict, batches: int):
    """A plain stream that has yielded `batches` batches."""
    s = stream(tok, cfg)
    for _ in range(batches):
        next(s)
    return s


def test_depth_must_be_positive(tok):
    with pytest.raises(ValueError, match="depth"):
        Prefetcher(stream(tok), depth=0)
