"""`unimodal generate`, `caption` and `embed` on tiny random models saved to disk, run in-process."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from unimodal import ModelConfig, UnifiedModel
from unimodal import pipeline as pipeline_module
from unimodal.cli import main
from unimodal.decoding import TextSampling
from unimodal.pipeline import Pipeline
from unimodal.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a small red circle at the top left", "two large blue squares"]


def random_model(tok, **kw) -> UnifiedModel:
    cfg = ModelConfig.from_preset("micro", vocab_size=tok.vocab_size if tok else 0, image_size=8, **kw)
    model = UnifiedModel(cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # random weights everywhere, so that prompts, labels and images matter
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: intra-op threads cost more than they give, and on a busy 2-core machine
    they spin (this file: ~4 s on one thread, ~30 s on two under load). Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load(ROOT / "tokenizers_cfg" / "shapes")


@pytest.fixture(scope="module")
def text_model(tok, tmp_path_factory) -> Path:
    return random_model(tok, block_size=2).save_pretrained(tmp_path_factory.mktemp("text") / "model", tokenizer=tok)


@pytest.fixture(scope="module")
def class_model(tmp_path_factory) -> Path:
    return random_model(None, num_classes=3, block_size=2).save_pretrained(tmp_path_factory.mktemp("cls") / "model")


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[str]:
    """Three 8x8 images: two RGB, one greyscale (converted to RGB for a 3-channel model)."""
    d = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(3):
        rng = np.random.default_rng(i)
        a = rng.integers(0, 256, (8, 8) if i == 2 else (8, 8, 3), dtype=np.uint8)
        paths.append(str(d / f"im{i}.png"))
        PILImage.fromarray(a).save(paths[-1])
    return paths


def run(capsys, *argv) -> str:
    assert main([str(a) for a in argv]) == 0
    return capsys.readouterr().out


def fails(capsys, *argv) -> str:
    """Runs a command that must fail cleanly: status 2, a message on stderr, no traceback."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    return err


def png(path) -> np.ndarray:
    return np.asarray(PILImage.open(path))


def generate(capsys, model, out, *extra) -> str:
    return run(capsys, "generate", model, "--steps", 2, "--out", out, *extra)


# -------------------------------------------------------------------------------------------- generate


def test_generate_writes_images_and_grid(capsys, text_model, tmp_path):
    out = generate(capsys, text_model, tmp_path, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", 3)
    out = out + generate(capsys, text_model, tmp_path / "g", "--prompt", PROMPTS[0], "--seed", 4, "--guidance", 2.5)
    tiles = [[png(tmp_path / f"prompt{i}_{j}.png") for j in range(3)] for i in range(2)]
    for row in tiles:
        for a in row:
            assert a.shape == (8, 8, 3) and a.dtype == np.uint8
    grid = png(tmp_path / "grid.png")
    assert grid.shape == (2 * 8, 3 * 8, 3)
    assert np.array_equal(grid, np.concatenate([np.concatenate(r, axis=1) for r in tiles], axis=0))
    for i in range(2):
        for j in range(3):
            assert str(tmp_path / f"prompt{i}_{j}.png") in out
    assert str(tmp_path / "grid.png") in out
    # the files are Pipeline.text_to_image's images: sample j of every prompt drawn with seed 0 + j
    pipe = Pipeline.from_pretrained(text_model)
    for i, p in enumerate(PROMPTS):
        expect = pipe.text_to_image([p] * 3, num_steps=2, seed=[0, 1, 2])
        for j in range(3):
            assert np.array_equal(tiles[i][j], np.asarray(expect[j]))
    guided = pipe.text_to_image([PROMPTS[0]], num_steps=2, seed=4, guidance=2.5)[0]
    assert np.array_equal(png(tmp_path / "g" / "prompt0_0.png"), np.asarray(guided))
    assert not np.array_equal(np.asarray(guided), tiles[0][0])


def test_seeds_reproduce_and_differ(capsys, text_model, tmp_path):
    args = ["--prompt", PROMPTS[1], "--num", 2]
    generate(capsys, text_model, tmp_path / "a", *args, "--seed", 7)
    generate(capsys, text_model, tmp_path / "b", *args, "--seed", 7)
    generate(capsys, text_model, tmp_path / "c", *args, "--seed", 8)
    for name in ("prompt0_0.png", "prompt0_1.png", "grid.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert not np.array_equal(png(tmp_path / "a" / "prompt0_0.png"), png(tmp_path / "c" / "prompt0_0.png"))
    # seed 8's first sample is seed 7's second
    assert np.array_equal(png(tmp_path / "a" / "prompt0_1.png"), png(tmp_path / "c" / "prompt0_0.png"))


def test_no_cache_gives_the_same_images(capsys, text_model, tmp_path, monkeypatch):
    engines = []  # use_cache of every Engine the pipeline builds: the flag must reach it
    real = pipeline_module.Engine
    monkeypatch.setattr(pipeline_module, "Engine", lambda *a: engines.append(a[3]) or real(*a))
    args = ["--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", 2, "--guidance", 3.0]
    generate(capsys, text_model, tmp_path / "cached", *args)
    generate(capsys, text_model, tmp_path / "uncached", *args, "--no-cache")
    assert engines == [True, False]
    for name in ("prompt0_0.png", "prompt0_1.png", "prompt1_0.png", "prompt1_1.png", "grid.png"):
        a = png(tmp_path / "cached" / name).astype(int)
        b = png(tmp_path / "uncached" / name).astype(int)
        assert np.abs(a - b).max() <= 1  # float sums in another order can flip a uint8 rounding


def test_sampler_option(capsys, text_model, tmp_path):
    generate(capsys, text_model, tmp_path / "euler", "--prompt", PROMPTS[0], "--sampler", "euler")
    generate(capsys, text_model, tmp_path / "heun", "--prompt", PROMPTS[0], "--sampler", "heun")
    heun = Pipeline.from_pretrained(text_model).text_to_image([PROMPTS[0]], num_steps=2, sampler="heun")[0]
    assert np.array_equal(png(tmp_path / "heun" / "prompt0_0.png"), np.asarray(heun))
    assert not np.array_equal(png(tmp_path / "heun" / "prompt0_0.png"), png(tmp_path / "euler" / "prompt0_0.png"))
    err = fails(capsys, "generate", text_model, "--prompt", "x", "--sampler", "ddpm", "--out", tmp_path)
    assert "ddpm" in err and "euler" in err  # this flow model takes euler or heun


def test_class_conditional(capsys, class_model, tmp_path):
    out = generate(capsys, class_model, tmp_path, "--class", 2, "--class", 0, "--num", 2, "--guidance", 2.0)
    tiles = [[png(tmp_path / f"class{y}_{j}.png") for j in range(2)] for y in (2, 0)]
    assert all(a.shape == (8, 8, 3) for r in tiles for a in r)
    assert np.array_equal(png(tmp_path / "grid.png"), np.concatenate([np.concatenate(r, 1) for r in tiles], 0))
    assert "class 2" in out
    pipe = Pipeline.from_pretrained(class_model)
    expect = pipe.class_to_image([2, 2, 0, 0], num_steps=2, seed=[0, 1, 0, 1], guidance=2.0)
    assert all(np.array_equal(t, np.asarray(e)) for t, e in zip(tiles[0] + tiles[1], expect, strict=True))
    assert not np.array_equal(tiles[0][0], tiles[1][0])  # the label matters
    assert "outside 0..2" in fails(capsys, "generate", class_model, "--class", 3, "--out", tmp_path)
    assert "--class" in fails(capsys, "generate", class_model, "--prompt", "a red circle", "--out", tmp_path)


# --------------------------------------------------------------------------------------- caption, embed


def test_caption_matches_the_pipeline(capsys, text_model, image_files):
    pipe = Pipeline.from_pretrained(text_model)
    arrays = [np.asarray(PILImage.open(p).convert("RGB")) for p in image_files]
    lines = run(capsys, "caption", text_model, *image_files, "--max-new-tokens", 6).splitlines()
    assert len(lines) == len(image_files)
    expect = pipe.caption(arrays, max_new_tokens=6)
    assert lines == [f"{p}\t{t}" for p, t in zip(image_files, expect, strict=True)]
    flags = ["--temperature", 1.5, "--top-k", 20, "--top-p", 0.9, "--seed", 3, "--max-new-tokens", 6]
    lines = run(capsys, "caption", text_model, *image_files, *flags).splitlines()
    sampled = pipe.caption(arrays, max_new_tokens=6, sampling=TextSampling(1.5, 20, 0.9), seed=3)
    assert [line.split("\t", 1)[1] for line in lines] == sampled
    assert sampled != expect  # the sampling flags reach the decoder


def test_embed_matches_the_pipeline(capsys, text_model, image_files, tmp_path):
    pipe = Pipeline.from_pretrained(text_model)
    arrays = [np.asarray(PILImage.open(p).convert("RGB")) for p in image_files]
    dim = pipe.cfg.dim
    out = run(capsys, "embed", text_model, *image_files, "--out", tmp_path / "e.npy")
    assert str((3, dim)) in out
    e = np.load(tmp_path / "e.npy")
    assert e.shape == (3, dim) and e.dtype == np.float32
    np.testing.assert_allclose(e, pipe.embed(arrays).numpy(), rtol=0, atol=1e-6)
    run(capsys, "embed", text_model, *image_files[:2], "--out", tmp_path / "sub" / "one", "--layer", 1)
    e1 = np.load(tmp_path / "sub" / "one")  # written under the exact name given
    np.testing.assert_allclose(e1, pipe.embed(arrays[:2], layer=1).numpy(), rtol=0, atol=1e-6)
    assert not np.allclose(e1, e[:2])
    assert "--layer must be in 1..2" in fails(
        capsys, "embed", text_model, image_files[0], "--out", tmp_path / "x.npy", "--layer", 3
    )


# ---------------------------------------------------------------------------------------------- errors


def test_image_errors(capsys, text_model, image_files, tmp_path):
    big = tmp_path / "big.png"
    PILImage.fromarray(np.zeros((12, 10, 3), np.uint8)).save(big)
    err = fails(capsys, "caption", text_model, image_files[0], big)
    assert str(big) in err and "10x12" in err and "8x8" in err
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    err = fails(capsys, "embed", text_model, junk, "--out", tmp_path / "e.npy")
    assert str(junk) in err and "cannot read" in err
    assert "no such file" in fails(capsys, "caption", text_model, tmp_path / "missing.png")
    assert not (tmp_path / "e.npy").exists()


def test_model_errors(capsys, tok, text_model, tmp_path):
    err = fails(capsys, "generate", tmp_path / "nowhere", "--prompt", "x", "--out", tmp_path)
    assert "nowhere" in err and "does not exist" in err
    (tmp_path / "empty").mkdir()
    assert "config.json" in fails(capsys, "caption", tmp_path / "empty", "x.png")
    # a pickle-only checkpoint: refused without --allow-pickle, loaded (weights_only) with it
    pk = tmp_path / "pickled"
    pk.mkdir()
    model = Pipeline.from_pretrained(text_model).model
    model.cfg.save(pk / "config.json")
    tok.save(pk / "tokenizer")
    torch.save(model.state_dict(), pk / "model.pt")
    err = fails(capsys, "generate", pk, "--prompt", PROMPTS[0], "--steps", 2, "--out", tmp_path / "p")
    assert "pickle" in err and "--allow-pickle" in err and not (tmp_path / "p").exists()
    generate(capsys, pk, tmp_path / "p", "--prompt", PROMPTS[0], "--allow-pickle")
    generate(capsys, text_model, tmp_path / "s", "--prompt", PROMPTS[0])
    assert np.array_equal(png(tmp_path / "p" / "prompt0_0.png"), png(tmp_path / "s" / "prompt0_0.png"))


def test_run_directory_and_help(capsys, text_model, tmp_path):
    """MODEL may be a training run directory (its model/ export); every command has --help."""
    run_dir = text_model.parent
    generate(capsys, run_dir, tmp_path, "--prompt", PROMPTS[0])
    assert (tmp_path / "prompt0_0.png").is_file()
    for cmd in ("generate", "caption", "embed"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0 and f"usage: unimodal {cmd}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # --prompt and --class exclude each other
        main(["generate", str(text_model), "--prompt", "x", "--class", "1"])
    assert e.value.code == 2
