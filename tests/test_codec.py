"""Image codecs and cached latents, with a tiny randomly initialised AutoencoderKL (nothing downloaded)."""

import inspect
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from unimodal import ModelConfig, UnifiedModel
from unimodal.cli import main
from unimodal.codec import CODEC_JSON, PixelCodec, VAECodec, encode_document, load_codec, save_codec
from unimodal.data import load_builtin
from unimodal.data.latents import MANIFEST, LatentDataset, encode_documents, load_latents
from unimodal.data.pipeline import DataConfig, batch_stream, build_documents
from unimodal.diffusion import Diffusion, losses
from unimodal.documents import Document, Image, Text
from unimodal.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
N = 12  # shapes t2i documents: 16x16 RGB images -> 4 x 8 x 8 latents (the tiny VAE downsamples by 2)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        sample_size=16,
        layers_per_block=1,
        norm_num_groups=8,
    )
    d = tmp_path_factory.mktemp("vae") / "vae"
    vae.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def codec(vae_dir) -> VAECodec:
    return VAECodec.from_pretrained(vae_dir, batch_size=5)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load(ROOT / "tokenizers_cfg" / "shapes")


def encode_argv(vae_dir: Path, out: Path, *extra: str) -> list[str]:
    args = ["latents", "encode", "--vae", str(vae_dir), "--builtin", "shapes", "--task", "t2i", "--n", str(N)]
    return args + ["--shard-size", "5", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def latents_dir(vae_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("latents") / "shapes"
    assert main(encode_argv(vae_dir, out)) == 0
    return out


def pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------------------------------------ codec


def test_encode_decode_shapes_ranges_and_scaling(codec):
    assert (codec.channels, codec.image_channels, codec.downsample) == (4, 3, 2)
    assert codec.scaling_factor == pytest.approx(0.18215) and codec.shift_factor is None
    x = pixels(7)
    z = codec.encode(x)
    assert z.shape == (7, 4, 8, 8) and z.dtype == torch.float32 and torch.isfinite(z).all()
    with torch.no_grad():
        mean = codec.vae.encode(x).latent_dist.mean
    torch.testing.assert_close(z, mean * 0.18215)  # the posterior mean, scaled
    y = codec.decode(z)
    assert y.shape == (7, 3, 16, 16) and y.dtype == torch.float32
    assert y.min() >= -1 and y.max() <= 1
    # any leading dimensions; a single image; batches of 5 give what one at a time gives
    assert codec.encode(x[:6].reshape(2, 3, 3, 16, 16)).shape == (2, 3, 4, 8, 8)
    assert codec.encode(x[0]).shape == (4, 8, 8) and codec.decode(z[0]).shape == (3, 16, 16)
    torch.testing.assert_close(torch.cat([codec.encode(x[i : i + 1]) for i in range(7)]), z, atol=1e-5, rtol=1e-5)
    # an override of the scaling factor and a shift
    other = VAECodec(codec.vae, scaling_factor=0.5, shift_factor=0.1)
    torch.testing.assert_close(other.encode(x), (mean - 0.1) * 0.5)
    torch.testing.assert_close(other.decode(other.encode(x)), codec.decode(z), atol=1e-5, rtol=1e-5)


def test_encode_is_deterministic_and_samples_are_seeded(codec):
    x = pixels(4, seed=1)
    assert torch.equal(codec.encode(x), codec.encode(x))
    gens = lambda: [torch.Generator().manual_seed(s) for s in range(4)]  # noqa: E731
    a = codec.encode(x, generator=gens(), sample=True)
    assert not torch.allclose(a, codec.encode(x))
    assert torch.equal(a, codec.encode(x, generator=gens(), sample=True))
    torch.testing.assert_close(codec.encode(x[2:3], generator=gens()[2:3], sample=True), a[2:3])  # batch-independent


def test_encode_checks_its_input(codec):
    with pytest.raises(ValueError, match="uint8"):
        codec.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        codec.encode(torch.full((1, 3, 16, 16), 200.0))
    with pytest.raises(ValueError, match="channels"):
        codec.encode(torch.zeros(1, 2, 16, 16))
    with pytest.raises(ValueError, match="multiple"):
        codec.encode(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ValueError, match="channels"):
        codec.decode(torch.zeros(1, 3, 8, 8))
    grey = pixels(2)[:, :1]
    torch.testing.assert_close(codec.encode(grey), codec.encode(grey.expand(-1, 3, -1, -1)))  # grey -> RGB


def test_bf16_and_pixel_codec(codec):
    x = pixels(3)
    half = VAECodec(VAECodec.from_pretrained(codec.source).vae, dtype="bf16")
    z = half.encode(x)
    assert z.dtype == torch.float32 and half.decode(z).dtype == torch.float32
    torch.testing.assert_close(z, codec.encode(x), atol=0.05, rtol=0.05)
    doc = Document([Text("a"), Image(np.zeros((16, 16, 3), np.uint8))], label=1)
    enc = encode_document(codec, doc)
    assert enc.images[0].latent and enc.images[0].shape == (1, 4, 8, 8) and enc.label == 1
    assert encode_document(codec, enc) is enc and encode_document(None, doc) is doc
    ident = PixelCodec()
    assert torch.equal(ident.decode(ident.encode(x)), x) and ident.latent_shape((1, 3, 16, 16)) == (1, 3, 16, 16)


def test_missing_diffusers_says_how_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install -e \.\[latents\]"):
        VAECodec.from_pretrained(tmp_path)
    assert main(["latents", "encode", "--vae", str(tmp_path), "--builtin", "shapes", "--out", str(tmp_path)]) == 2
    assert "pip install -e .[latents]" in capsys.readouterr().err


def test_no_vae_folder_is_an_error_not_a_download(tmp_path):
    pytest.importorskip("diffusers")
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        VAECodec.from_pretrained("someone/some-vae-that-is-not-cached")
    with pytest.raises(FileNotFoundError, match="config.json"):
        VAECodec.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------- cached latents


def test_latents_command_writes_shards_and_manifest(latents_dir, codec):
    names = sorted(p.name for p in latents_dir.iterdir())
    assert names == [MANIFEST] + [f"shard-0000{k}.{ext}" for k in range(3) for ext in ("jsonl", "safetensors")]
    m = json.loads((latents_dir / MANIFEST).read_text())
    assert m["complete"] and m["documents"] == N and m["num_shards"] == 3 and m["bad_records"] == 0
    assert [s["documents"] for s in m["shards"]] == [5, 5, 2]
    assert m["codec"]["scaling_factor"] == pytest.approx(0.18215) and m["codec"]["posterior"] == "mean"
    assert m["source"]["builtin"] == "shapes" and m["source"]["n"] == N
    from safetensors.torch import load_file

    every = torch.cat(
        [t.flatten() for k in range(3) for t in load_file(latents_dir / f"shard-0000{k}.safetensors").values()]
    )
    assert m["latent_stats"]["mean"] == pytest.approx(every.mean().item(), abs=1e-5)
    assert m["latent_stats"]["std"] == pytest.approx(every.std(unbiased=False).item(), rel=1e-4)
    tensors = load_file(latents_dir / "shard-00001.safetensors")
    lines = [json.loads(s) for s in (latents_dir / "shard-00001.jsonl").read_text().splitlines()]
    assert [rec["index"] for rec in lines] == [5, 6, 7, 8, 9]
    docs = load_builtin("shapes", task="t2i", n=N)
    for rec in lines:
        text, image = rec["segments"]
        assert text["text"] == docs[rec["index"]].segments[0].text and image["shape"] == [1, 4, 8, 8]
        expect = codec.encode(docs[rec["index"]].segments[1].to_tensor())
        torch.testing.assert_close(tensors[image["image"]], expect, atol=1e-5, rtol=1e-5)


def test_latents_command_is_idempotent_and_resumes(vae_dir, tmp_path, capsys):
    out = tmp_path / "lat"
    assert main(encode_argv(vae_dir, out)) == 0
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    capsys.readouterr()
    assert main(encode_argv(vae_dir, out)) == 0
    assert "0 written, 3 already done" in capsys.readouterr().out
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    assert after == before  # nothing rewritten
    # an interrupted run (shard 1 missing, manifest incomplete) is finished by running it again
    (out / "shard-00001.jsonl").unlink()
    m = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**m, "complete": False, "shards": m["shards"][:1]}))
    with pytest.raises(ValueError, match="incomplete"):
        LatentDataset(out)
    assert main(encode_argv(vae_dir, out)) == 0
    assert "1 written, 2 already done" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {k: v[0] for k, v in before.items()}
    # another configuration into the same folder is refused, with what differs
    assert main(encode_argv(vae_dir, out, "--save-dtype", "float16")) == 2
    assert "save_dtype" in capsys.readouterr().err


def test_latent_documents_train_through_the_pipeline(latents_dir, tok, codec):
    cfg = {"source": {"format": "latents", "path": str(latents_dir)}, "batch_size": 4}
    docs = build_documents(DataConfig.from_dict(cfg))
    assert isinstance(docs, LatentDataset) and len(docs) == N
    pixels_doc = load_builtin("shapes", task="t2i", n=N)[7]
    doc = docs[7]
    assert isinstance(doc.segments[0], Text) and doc.segments[0].text == pixels_doc.segments[0].text
    image = doc.segments[1]
    assert isinstance(image, Image) and image.latent and image.shape == (1, 4, 8, 8)
    assert doc.meta["source_index"] == 7 and doc.meta["scene"] == pixels_doc.meta["scene"]
    torch.testing.assert_close(
        codec.decode(image.to_tensor()), codec.decode(codec.encode(pixels_doc.segments[1].to_tensor()))
    )

    mc = ModelConfig.from_preset("micro", channels=4, image_size=8, patch_size=2, block_size=2, vocab_size=512)
    stream = batch_stream(cfg, tok, mc)
    batch = next(stream)
    assert batch.patches.shape[-1] == mc.patch_dim == 16
    model = UnifiedModel(mc)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out = losses(model, batch, Diffusion("flow"), torch.Generator().manual_seed(0))
    out["loss"].backward()
    opt.step()
    assert torch.isfinite(out["loss"]) and out["image_count"] > 0 and out["text_count"] > 0
    with pytest.raises(ValueError, match="unknown keys"):
        load_latents({"format": "latents", "path": str(latents_dir), "streaming": True})
    with pytest.raises(ValueError, match="--flip"):
        load_latents(latents_dir, flip=True)


def test_recipe_config_flip_and_bad_records(vae_dir, tmp_path, codec):
    """--config reads a recipe's data: section (here a captions file with a missing image, skipped);
    --flip stores mirrored latents, read back as a second copy of the dataset."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        PILImage.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png" if i != 2 else "missing.png", "caption": f"picture {i}"})
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {
        "data": {"source": {"format": "captions", "path": str(tmp_path / "pairs.jsonl"), "on_bad_record": "skip"}}
    }
    (tmp_path / "recipe.yaml").write_text(json.dumps(recipe))  # JSON is YAML
    out = tmp_path / "lat"
    argv = ["latents", "encode", "--vae", str(vae_dir), "--config", str(tmp_path / "recipe.yaml"), "--out", str(out)]
    assert main([*argv, "--flip"]) == 0
    m = json.loads((out / MANIFEST).read_text())
    assert m["documents"] == 3 and m["bad_records"] == 1 and m["flip"]
    ds = load_latents({"format": "latents", "path": str(out), "flip": True})
    assert len(ds) == 6 and ds[3].meta["flipped"] and ds[3].segments[0].text == "picture 0"
    x = Image(np.asarray(PILImage.open(tmp_path / "0.png"))).to_tensor()
    torch.testing.assert_close(ds[0].segments[1].to_tensor(), codec.encode(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ds[3].segments[1].to_tensor(), codec.encode(x.flip(-1)), atol=1e-5, rtol=1e-5)
    docs = [Document([Text("a"), Image(torch.zeros(4, 8, 8), latent=True)])]
    with pytest.raises(ValueError, match="already latent"):
        encode_documents(docs, codec, tmp_path / "again")


# ----------------------------------------------------------------------------------- model folders


def test_model_folder_codec_copy_link_and_attach(vae_dir, codec, latents_dir, tmp_path, capsys):
    mc = ModelConfig.from_preset("micro", channels=4, image_size=8, vocab_size=0)
    model = tmp_path / "model"
    UnifiedModel(mc).save_pretrained(model)
    assert load_codec(model) is None
    z = codec.encode(pixels(2))
    save_codec(model, codec)  # a copy in model/codec/
    copied = load_codec(model)
    assert (model / "codec" / "config.json").is_file() and isinstance(copied, VAECodec)
    torch.testing.assert_close(copied.decode(z), codec.decode(z))
    linked = tmp_path / "linked"
    UnifiedModel(mc).save_pretrained(linked)
    spec = json.loads(save_codec(linked, codec, link=True).read_text())
    assert spec["path"] == str(vae_dir.resolve()) and (linked / CODEC_JSON).is_file()
    torch.testing.assert_close(load_codec(linked).decode(z), codec.decode(z))
    # `unimodal latents attach` from a cached-latents folder; a model of other channels is refused
    run = tmp_path / "run"
    UnifiedModel(mc).save_pretrained(run / "model")
    assert main(["latents", "attach", str(run), "--from-latents", str(latents_dir)]) == 0
    assert isinstance(load_codec(run / "model"), VAECodec)
    pix = tmp_path / "pixels"
    UnifiedModel(ModelConfig.from_preset("micro", image_size=8, vocab_size=0)).save_pretrained(pix)
    assert main(["latents", "attach", str(pix), "--vae", str(vae_dir), "--link"]) == 2
    assert "3 channels" in capsys.readouterr().err and not (pix / CODEC_JSON).exists()
    assert main(["latents", "info", str(latents_dir)]) == 0
    assert "12 in 3 shards" in capsys.readouterr().out


def test_pipeline_decodes_latents_to_pixels(codec, tmp_path):
    from unimodal.pipeline import Pipeline

    if "codec" not in inspect.signature(Pipeline.__init__).parameters:
        pytest.skip("Pipeline does not take a codec yet")
    mc = ModelConfig.from_preset("micro", channels=4, image_size=8, vocab_size=0, num_classes=2)
    d = UnifiedModel(mc).save_pretrained(tmp_path / "model")
    save_codec(d, codec)
    images = Pipeline.from_pretrained(d).class_to_image([0, 1], num_steps=2)
    assert [im.size for im in images] == [(16, 16)] * 2 and images[0].mode == "RGB"


def test_pipeline_reads_given_pixels_through_the_codec(codec, tok):
    """A latent model reads given pixel images (captions, documents, embeddings, clips to
    continue) as their latents: the same result as handing it `codec.encode(pixels)` yourself;
    continued clips come back decoded to pixels, the given frames as the codec reconstructs them."""
    from unimodal.pipeline import Pipeline

    torch.manual_seed(0)
    mc = ModelConfig.from_preset("micro", channels=4, image_size=8, patch_size=2, vocab_size=tok.vocab_size)
    pipe = Pipeline(UnifiedModel(mc), tok, num_steps=2, codec=codec)
    px = pixels(2, seed=3)
    lat = [Image(codec.encode(p), latent=True) for p in px]
    pil = [im.permute(1, 2, 0).numpy() for im in px]
    assert pipe.caption(pil, max_new_tokens=5) == pipe.caption(lat, max_new_tokens=5)
    torch.testing.assert_close(pipe.embed(pil), pipe.embed(lat))
    doc = pipe.generate(Document([Text("a red"), Image(pil[0])]), max_new_tokens=4, max_images=0)
    want = pipe.generate(Document([Text("a red"), lat[0]]), max_new_tokens=4, max_images=0)
    assert doc.segments[2].text == want.segments[2].text and doc.segments[1].data is pil[0]

    video = {"frames": 3, "block_kind": "frames", "block_size": 1}
    vc = ModelConfig.from_preset("micro", channels=4, image_size=8, patch_size=2, vocab_size=tok.vocab_size, **video)
    vpipe = Pipeline(UnifiedModel(vc), tok, num_steps=2, codec=codec)
    clip = pixels(1, seed=4).unsqueeze(0)  # one frame of (1, 3, 16, 16) -> (1, 1, 16, 16, 3) channels last
    out = vpipe.continue_video([clip[0].permute(0, 2, 3, 1).numpy()], num_frames=3, output_type="np")
    assert out[0].shape == (3, 16, 16, 3)
    first = codec.decode(codec.encode(clip[0]))[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(out[0][0], first, atol=1e-5)
