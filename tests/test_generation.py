"""Generation: cached == uncached, batched == one at a time, guidance, seeds, the state machine."""

from pathlib import Path

import numpy as np
import pytest
import torch

from unimodal import Document, ModelConfig, Text, UnifiedModel
from unimodal.generation import Engine
from unimodal.layout import TEXT, encode_document, pack
from unimodal.pipeline import Pipeline
from unimodal.samplers import make_sampler
from unimodal.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4  # float32 on CPU: cached and uncached sum attention in different orders


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load(ROOT / "tokenizers_cfg" / "shapes")


def random_model(tok, **kw) -> UnifiedModel:
    cfg = ModelConfig.from_preset("micro", vocab_size=tok.vocab_size if tok else 0, image_size=8, **kw)
    model = UnifiedModel(cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # random weights everywhere: zero-init AdaLN would hide conditioning bugs
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return model.eval()


PROMPTS = ["a small red circle at the top left", "two large blue squares"]


@pytest.mark.parametrize("block_size", [1, 2, 4], ids=["1-patch", "few", "whole-image"])
@pytest.mark.parametrize("guidance", [None, 2.5])
def test_cached_equals_uncached_text_to_image(tok, block_size, guidance):
    pipe = Pipeline(random_model(tok, block_size=block_size), tok, num_steps=3)
    kw = dict(seed=0, guidance=guidance, output_type="np")
    a = pipe.text_to_image(PROMPTS, use_cache=True, **kw)
    b = pipe.text_to_image(PROMPTS, use_cache=False, **kw)
    for x, y in zip(a, b, strict=True):
        assert np.abs(x - y).max() < TOL
    assert np.abs(a[0] - a[1]).max() > 1e-2  # different prompts and seeds give different images


@pytest.mark.parametrize("guidance", [None, 2.5])
@pytest.mark.parametrize("use_cache", [True, False])
def test_self_conditioned_sampling_reads_the_last_guided_estimate(tok, guidance, use_cache):
    """model.self_condition: every model call of a block after its first reads x̂0 = x - t·v of the
    call before it, v being that call's guided velocity, in both branches; a block's first call
    reads nothing. Checked on the model's own inputs and outputs, recorded call by call; the
    cached and uncached engines draw the same images, and the estimate changes them."""
    model = random_model(tok, block_size=2, self_condition=True, prediction="sample")
    calls = []
    forward = model.forward

    def recording(tokens, patches, layout, **kw):
        out = forward(tokens, patches, layout, **kw)
        if layout.noisy.any():
            calls.append((patches[layout.noisy], kw["t"], kw.get("self_cond"), out.pred))
        return out

    model.forward = recording
    pipe = Pipeline(model, tok, num_steps=3)
    kw = dict(seed=0, guidance=guidance, output_type="np")
    images = pipe.text_to_image(PROMPTS, use_cache=use_cache, **kw)
    n_blocks, branches, steps = 4, 1 if guidance is None else 2, 3
    assert len(calls) == n_blocks * steps
    for j, (_, _, sc, _) in enumerate(calls):
        if j % steps == 0:
            assert sc is None
            continue
        px, pt, _, ppred = calls[j - 1]
        px, ppred = px.view(branches, -1, px.shape[-1]), ppred.view(branches, -1, px.shape[-1])
        v = ppred[0] if guidance is None else ppred[1] + guidance * (ppred[0] - ppred[1])
        want = (px[0] - pt[0] * v).repeat(branches, 1)
        torch.testing.assert_close(sc, want, rtol=1e-5, atol=1e-5)
    model.forward = forward
    other = pipe.text_to_image(PROMPTS, use_cache=not use_cache, **kw)
    for x, y in zip(images, other, strict=True):
        assert np.abs(x - y).max() < TOL
    with torch.no_grad():
        model.sc_embedder.weight.zero_()
    blind = pipe.text_to_image(PROMPTS, use_cache=use_cache, **kw)
    assert max(np.abs(x - y).max() for x, y in zip(images, blind, strict=True)) > 1e-2


def test_no_prompts_no_images(tok):
    """An empty prompt list draws nothing, with or without guidance."""
    pipe = Pipeline(random_model(tok), tok, num_steps=2)
    assert pipe.text_to_image([]) == [] and pipe.text_to_image([], guidance=2.0) == []


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp_2m"])
def test_cached_equals_uncached_class_guidance(sampler):
    """Class mode: both branches read one shared cache row."""
    pipe = Pipeline(random_model(None, num_classes=4, diffusion="ddpm_eps", block_size=2), None, num_steps=3)
    kw = dict(seed=5, guidance=3.0, output_type="np", sampler=sampler)
    a = pipe.class_to_image([1, 3], use_cache=True, **kw)
    b = pipe.class_to_image([1, 3], use_cache=False, **kw)
    for x, y in zip(a, b, strict=True):
        assert np.abs(x - y).max() < TOL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU visible to torch)")
def test_generation_on_cuda_equals_cpu(tok):
    """The engine, cache, plans, samplers and guidance on a GPU: images, interleaved documents and
    captions match the CPU's (noise is drawn on CPU generators on both, so the seeds agree)."""
    cpu = Pipeline(random_model(tok, block_size=2), tok, num_steps=3)
    gpu = Pipeline(random_model(tok, block_size=2).cuda(), tok, num_steps=3)
    kw = dict(seed=0, guidance=2.5, output_type="np")
    for use_cache in (True, False):
        a = gpu.text_to_image(PROMPTS, use_cache=use_cache, **kw)
        b = cpu.text_to_image(PROMPTS, use_cache=use_cache, **kw)
        for x, y in zip(a, b, strict=True):
            assert np.abs(x - y).max() < 1e-3
    images = [np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8) for i in range(3)]
    assert gpu.caption(images, max_new_tokens=6) == cpu.caption(images, max_new_tokens=6)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        c = gpu.text_to_image(PROMPTS, **kw)
    assert all(np.isfinite(x).all() for x in c)


def test_captions_cached_equal_uncached(tok):
    pipe = Pipeline(random_model(tok, block_size=2), tok)
    images = [np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8) for i in range(3)]
    assert pipe.caption(images, max_new_tokens=6) == pipe.caption(images, max_new_tokens=6, use_cache=False)


def test_batched_equals_one_at_a_time(tok):
    pipe = Pipeline(random_model(tok, block_size=2), tok, num_steps=3)
    together = pipe.text_to_image(PROMPTS, seed=[11, 12], guidance=2.0, output_type="np")
    alone = [
        pipe.text_to_image([p], seed=[s], guidance=2.0, output_type="np")[0]
        for p, s in zip(PROMPTS, [11, 12], strict=True)
    ]
    for x, y in zip(together, alone, strict=True):
        assert np.abs(x - y).max() < TOL
    images = [np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8) for i in range(2)]
    assert pipe.caption(images, max_new_tokens=5) == [pipe.caption([im], max_new_tokens=5)[0] for im in images]


def test_guidance_one_equals_none_and_seeds(tok):
    pipe = Pipeline(random_model(tok, block_size=2), tok, num_steps=3, sampler="euler")
    a = pipe.text_to_image(PROMPTS, seed=1, guidance=1.0, output_type="np")
    b = pipe.text_to_image(PROMPTS, seed=1, guidance=None, output_type="np")
    c = pipe.text_to_image(PROMPTS, seed=1, guidance=None, output_type="np")
    d = pipe.text_to_image(PROMPTS, seed=2, guidance=None, output_type="np")
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(np.array_equal(x, y) for x, y in zip(b, c, strict=True))
    assert np.abs(b[0] - d[0]).max() > 1e-2
    e = pipe.text_to_image(PROMPTS, seed=1, guidance=4.0, output_type="np")
    assert np.abs(b[0] - e[0]).max() > 1e-3  # guidance does something


def test_interleaved_state_machine(tok):
    """<boi> opens an image of the configured shape, <eoi> closes it, text resumes after it."""
    pipe = Pipeline(random_model(tok, block_size=2), tok, num_steps=2)
    word = tok.encode("red")[0]
    plan = [tok.boi_id, word, tok.eos_id]

    def force(rows, logits):
        out = torch.full_like(logits, float("-inf"))
        for q, r in enumerate(rows):
            out[q, plan[forced[r]]] = 0.0
            forced[r] += 1
        return out

    forced = [0, 0]
    docs = pipe.generate(
        [Document([Text("a blue square")]), Document([Text("two circles")])],
        max_new_tokens=8,
        logits_processor=force,
    )
    for d, given in zip(docs, ["a blue square", "two circles"], strict=True):
        kinds = [type(s).__name__ for s in d.segments]
        assert kinds == ["Text", "Image", "Text"]
        assert d.segments[0].text == given and d.segments[2].text == "red"
        assert np.asarray(d.segments[1].data).shape == (8, 8, 3)


@pytest.mark.parametrize("abs_pos", ["none", "sincos"])
def test_text_after_an_image_sees_the_clean_image(tok, abs_pos):
    """The logits after <eoi> from the engine equal the training forward on the clean document
    (with absolute positions: the engine places the image where `pack` does)."""
    model = random_model(tok, block_size=2, abs_pos=abs_pos)
    cfg = model.cfg
    prompt = [tok.bos_id, *tok.encode("a red circle"), tok.boi_id]
    eng = Engine(model, 1, 256)
    with torch.no_grad():
        eng.text([0], [prompt])
        eng.begin_image([0], cfg.grid)
        blocks = eng.generate_image([0], make_sampler("euler", 2, "flow"), [torch.Generator().manual_seed(0)])
        eng.end_image([0])
        logits = eng.text([0], [[tok.eoi_id]])
        image = torch.from_numpy(Pipeline(model, tok)._images(blocks, "np")[0]).permute(2, 0, 1).unsqueeze(0)
        enc = encode_document(Document([Text(ids=prompt)]), cfg.patch_size, cfg.block_spec)
        from unimodal.layout import VisualSegment
        from unimodal.patches import to_blocks

        tokens, pos = to_blocks(image, cfg.patch_size, cfg.block_spec)
        enc.segments += [VisualSegment(tokens, pos, cfg.grid), [tok.eoi_id]]
        batch = pack([enc], cfg.patch_dim, with_noisy=False)
        full = model(batch.tokens, batch.patches, batch.layout, backend="dense")
    expect = full.text_logits[-1]
    torch.testing.assert_close(logits[0], expect, rtol=1e-4, atol=1e-4)
    # and it depends on the image: another image gives other logits
    batch.patches[batch.layout.modality == 1] += 0.5
    with torch.no_grad():
        other = model(batch.tokens, batch.patches, batch.layout, backend="dense").text_logits[-1]
    assert (other - expect).abs().max() > 1e-3
    assert (batch.layout.modality == TEXT).sum() == len(prompt) + 1


def test_embed_and_round_trip(tok, tmp_path):
    model = random_model(tok, block_size=2)
    pipe = Pipeline(model, tok, num_steps=2)
    images = [np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8) for i in range(3)]
    e = pipe.embed(images)
    assert e.shape == (3, model.cfg.dim) and torch.isfinite(e).all()
    assert not torch.allclose(e[0], e[1])
    assert pipe.embed(images, layer=1).shape == (3, model.cfg.dim)
    torch.testing.assert_close(pipe.embed(images[:1]), e[:1])  # batching does not change an embedding
    model.save_pretrained(tmp_path / "m", tokenizer=tok)
    again = Pipeline.from_pretrained(tmp_path / "m", num_steps=2)
    a = pipe.text_to_image(PROMPTS, seed=0, output_type="np")
    b = again.text_to_image(PROMPTS, seed=0, output_type="np")
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert pipe.caption(images, max_new_tokens=4) == again.caption(images, max_new_tokens=4)


@pytest.mark.parametrize("window", [None, 1])
def test_video_continuation_cached_equals_uncached(tok, window):
    """Given 2 frames, continue to 6 (the model's clips have 4): blocks of whole frames, with and
    without a sliding window over earlier blocks."""
    model = random_model(tok, frames=4, block_kind="frames", block_size=1)
    pipe = Pipeline(model, tok, num_steps=2)
    clip = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    kw = dict(num_frames=6, prompts=["a red circle moving right"], window=window, seed=3, output_type="np")
    a = pipe.continue_video([clip], use_cache=True, **kw)[0]
    b = pipe.continue_video([clip], use_cache=False, **kw)[0]
    assert a.shape == (6, 8, 8, 3)
    assert np.abs(a - b).max() < TOL
    np.testing.assert_allclose(a[:2], clip / 127.5 - 1, atol=1e-6)  # the given frames are kept as given


def test_video_window_bounds_the_context(tok):
    model = random_model(tok, frames=4, block_kind="frames", block_size=1)
    pipe = Pipeline(model, tok, num_steps=2)
    clip = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    kw = dict(num_frames=5, prompts=["a red circle"], seed=3, output_type="np")
    full = pipe.continue_video([clip], **kw)[0]
    windowed = pipe.continue_video([clip], window=1, **kw)[0]
    np.testing.assert_array_equal(full[2], pipe.continue_video([clip], window=2, **kw)[0][2])  # frame 2 sees 2 blocks
    assert np.abs(full[2] - windowed[2]).max() > 1e-3  # with a window of 1, frame 2 no longer sees frame 0
    with pytest.raises(ValueError, match="whole blocks"):
        pipe.continue_video([clip], num_frames=2)


def test_interval_guidance_applies_to_eps_models():
    """Intervals are in unit time for every parameterisation (DDPM steps 0..999 included)."""
    from unimodal.guidance import IntervalGuidance

    pipe = Pipeline(random_model(None, num_classes=4, diffusion="ddpm_eps", block_size=4), None, num_steps=3)
    plain = pipe.class_to_image([1], seed=0, output_type="np")[0]
    everywhere = pipe.class_to_image([1], seed=0, guidance=IntervalGuidance(4.0, 0.0, 1.0), output_type="np")[0]
    constant = pipe.class_to_image([1], seed=0, guidance=4.0, output_type="np")[0]
    assert np.abs(everywhere - plain).max() > 1e-3
    np.testing.assert_array_equal(everywhere, constant)


def test_video_model_outputs_pil_frames_and_a_sample_grid(tok, tmp_path):
    """A video model's text_to_image gives each clip as a list of PIL frames (like continue_video),
    equal to the "np" output rounded; the end-of-run grid lays each clip out as a row of frames."""
    from PIL import Image as PILImage

    from unimodal.train.artifacts import image_grid

    model = random_model(tok, frames=4, block_kind="frames", block_size=1)
    pipe = Pipeline(model, tok, num_steps=2)
    clips = pipe.text_to_image(PROMPTS, seed=0)
    arrays = pipe.text_to_image(PROMPTS, seed=0, output_type="np")
    assert [len(c) for c in clips] == [4, 4] and all(isinstance(f, PILImage.Image) for f in clips[0])
    for clip, a in zip(clips, arrays, strict=True):
        expect = ((np.clip(a, -1, 1) + 1) * 127.5).round().astype(np.uint8)
        np.testing.assert_array_equal(np.stack([np.asarray(f) for f in clip]), expect)
    strip = image_grid(clips[1], len(clips[1]))
    assert strip.size == (4 * 8, 8)
    np.testing.assert_array_equal(np.asarray(strip)[:, 8:16], np.asarray(clips[1][1]))


def test_caption_logprob_is_the_likelihood_of_the_text_after_the_image(tok):
    """Against each pair alone, with the tokens after `<eoi>` picked by hand: batching, packing
    several documents per call and the choice of targets change nothing."""
    from unimodal.documents import Image

    pipe = Pipeline(random_model(tok, block_size=2), tok)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
    texts = ["a small red circle", "two large blue squares at the top left", "a green triangle"]
    got = pipe.caption_logprob(images, texts, batch_size=2)  # a batch of two documents, then one
    assert got.dtype == torch.float64 and got.shape == (3,)
    for im, text, g in zip(images, texts, got, strict=True):
        enc = pipe.collator.encode(Document([Image(im), Text(text)]), close=True)
        b = pack([enc], pipe.cfg.patch_dim, with_noisy=False)
        with torch.no_grad():
            logp = pipe.model(b.tokens, b.patches, b.layout).text_logits.double().log_softmax(-1)
        ids = b.tokens[(b.layout.modality == TEXT) & ~b.layout.noisy]
        eoi = int((ids == tok.eoi_id).nonzero()[0, 0])
        want = sum(float(logp[i, ids[i + 1]]) for i in range(eoi, len(ids) - 1))  # the text and <eos>
        assert float(g) == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="2 images for 3 texts"):
        pipe.caption_logprob(images[:2], texts)


@pytest.mark.parametrize(
    "kw", [dict(block_size=2), dict(frames=2, block_kind="frames", block_size=1)], ids=["image", "clip"]
)
def test_candidates_keep_the_image_whose_caption_is_likeliest(tok, kw):
    pipe = Pipeline(random_model(tok, **kw), tok, num_steps=2)
    best = pipe.text_to_image(PROMPTS, seed=[5, 9], guidance=2.0, candidates=3, output_type="np")
    for prompt, s, b in zip(PROMPTS, [5, 9], best, strict=True):
        seeds = [3 * s + j for j in range(3)]  # candidate j of seed s
        drawn = [pipe.text_to_image([prompt], seed=[x], guidance=2.0)[0] for x in seeds]
        drawn = [np.stack(x) if isinstance(x, list) else x for x in drawn]  # a clip's frames as one array
        scores = pipe.caption_logprob(drawn, [prompt] * 3)
        assert len(set(scores.tolist())) == 3  # the candidates differ, so the choice matters
        want = pipe.text_to_image([prompt], seed=[seeds[int(scores.argmax())]], guidance=2.0, output_type="np")[0]
        assert np.abs(b - want).max() < TOL
    pipe.candidates = 3  # the pipeline's default
    again = pipe.text_to_image(PROMPTS, seed=[5, 9], guidance=2.0, output_type="np")
    assert all(np.abs(x - y).max() < TOL for x, y in zip(best, again, strict=True))
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="candidates must be an integer >= 1"):
            pipe.text_to_image(PROMPTS, candidates=bad)
