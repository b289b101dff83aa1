"""Data configs to batches: built-ins and the user's own files, resumable mid-epoch."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from unimodal import ModelConfig
from unimodal.data.pipeline import DataConfig, batch_stream
from unimodal.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load(ROOT / "tokenizers_cfg" / "shapes")


def model_cfg():
    return ModelConfig.from_preset("micro", image_size=16, block_size=4, vocab_size=512)


def same(a, b):
    return (
        torch.equal(a.tokens, b.tokens)
        and torch.equal(a.patches, b.patches)
        and torch.equal(a.layout.noisy, b.layout.noisy)
    )


def test_builtin_batches_and_exact_resume(tok):
    cfg = {"builtin": "shapes", "task": "t2i", "n": 20, "batch_size": 6, "collate": {"image_first_rate": 0.5}}
    full = batch_stream(cfg, tok, model_cfg())
    ref = [next(full) for _ in range(7)]  # crosses the epoch boundary (20 documents, 6 per batch)
    first = batch_stream(cfg, tok, model_cfg())
    for _ in range(3):
        next(first)
    state = json.loads(json.dumps(first.state_dict()))  # JSON-serialisable, as checkpoints need
    resumed = batch_stream(cfg, tok, model_cfg())
    resumed.load_state_dict(state)
    for b in ref[3:]:
        assert same(next(resumed), b)
    assert ref[0].layout.shape[0] == 6 and not same(ref[0], ref[1])


def test_ranks_see_disjoint_documents(tok):
    cfg = {"builtin": "digits", "split": "test", "batch_size": 4}
    mc = ModelConfig.from_preset("micro", channels=1, vocab_size=512)
    seen = []
    for rank in range(2):
        s = batch_stream(cfg, Tokenizer.load(ROOT / "tokenizers_cfg" / "digits"), mc, rank=rank, world_size=2)
        seen.append({tuple(p.flatten().tolist()) for p in next(s).patches})
    assert not seen[0] & seen[1]


def write_captions(tmp_path: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        PILImage.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "caption": f"picture number {i}"})
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize("streaming", [False, True])
def test_own_caption_files_to_batches(tok, tmp_path, streaming):
    path = write_captions(tmp_path, 10)
    cfg = DataConfig.from_dict(
        {"source": {"format": "captions", "path": str(path), "streaming": streaming, "name": "mine"}, "batch_size": 4}
    )
    stream = batch_stream(cfg, tok, model_cfg())
    batches = [next(stream) for _ in range(3)]
    docs = [d for b in batches for d in stream.collator.decode(b)]
    texts = [d.segments[0].text for d in docs]
    assert all(t.startswith("picture number") for t in texts)
    assert len(set(texts[:10])) == 10  # the first epoch covers every record once
    resumed = batch_stream(cfg, tok, model_cfg())
    next(resumed)
    state = resumed.state_dict()
    again = batch_stream(cfg, tok, model_cfg())
    again.load_state_dict(state)
    assert same(next(again), batches[1])


def test_config_errors_name_the_key():
    with pytest.raises(KeyError, match="batchsize"):
        DataConfig.from_dict({"builtin": "shapes", "batchsize": 3})
    with pytest.raises(KeyError, match="data.collate.*dropout"):
        DataConfig.from_dict({"builtin": "shapes", "collate": {"dropout": 0.1}})
    with pytest.raises(ValueError, match="exactly one"):
        DataConfig.from_dict({"batch_size": 3})


def test_ranks_split_the_global_batch_exactly(tok):
    """Two ranks' batches are the two halves of one process's batch at the same global size,
    including the diffusion noise (seeded per document)."""
    from unimodal.diffusion import Diffusion, noise_batch

    cfg = {"builtin": "shapes", "task": "t2i", "n": 30, "collate": {"image_first_rate": 0.5, "prompt_dropout": 0.3}}
    one = batch_stream({**cfg, "batch_size": 8}, tok, model_cfg())
    two = [batch_stream({**cfg, "batch_size": 4}, tok, model_cfg(), rank=r, world_size=2) for r in range(2)]
    diff = Diffusion("flow")
    for _ in range(3):
        whole = one.collator.decode(b := next(one))
        halves = [next(s) for s in two]
        parts = [d for h in halves for d in two[0].collator.decode(h)]
        assert [s.text for d in whole for s in d.segments if hasattr(s, "text")] == [
            s.text for d in parts for s in d.segments if hasattr(s, "text")
        ]
        full_noise = noise_batch(b, diff)
        half_noise = [noise_batch(h, diff) for h in halves]
        assert torch.equal(full_noise.t, torch.cat([h.t for h in half_noise]))
        assert torch.equal(full_noise.target, torch.cat([h.target for h in half_noise]))
