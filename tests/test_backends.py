"""Attention backends against the dense SDPA reference (ARCHITECTURE.md §2).

FlexAttention compiles through torch.compile (~20 s per shape on CPU), so every CPU flex call in
this file uses the same shapes: R=2 rows of L=128 tokens (one FLEX_TILE), 2 heads of 64, q/k/v laid
out as the model lays them out ((R, L, H, D) transposed to (R, H, L, D)). CUDA tests (xformers,
FlexAttention on GPU) skip without CUDA and run for real on it.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
import torch

import unimodal.attention.backends as backends
from unimodal import Document, Image, ModelConfig, Text, UnifiedModel
from unimodal.attention import AttentionPlan, Fields, dense_mask, resolve_backend
from unimodal.attention.backends import FLEX_TILE
from unimodal.diffusion import Diffusion, losses
from unimodal.layout import TEXT, VISUAL, encode_document, pack
from unimodal.patches import BlockSpec

HEADS, HEAD_DIM = 2, 64
PATCH = 2
SPEC = BlockSpec("tiles", 2)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU visible to torch)")


def _documents() -> list[Document]:
    rng = np.random.default_rng(0)

    def img(h: int, w: int) -> Image:
        return Image(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))

    return [
        Document([Text(ids=[1, 2, 3, 4, 5]), img(8, 8), Text(ids=[6, 7, 8, 9])]),  # text -> image -> text
        Document([img(8, 8)], label=3),  # image only, labelled
        Document([Text(ids=list(range(10, 20)))]),  # text only
        Document([Text(ids=[1, 2, 3, 4, 5, 6]), img(4, 8), Text(ids=[7, 8]), img(8, 8)]),  # two images
    ]


def _batch(pad_multiple: int = FLEX_TILE):
    """Two packed rows (three documents + padding, one document + padding)."""
    enc = [encode_document(d, PATCH, SPEC) for d in _documents()]
    return pack(enc, 3 * PATCH * PATCH, row_len=100, pad_multiple=pad_multiple)


def _qkv(r: int, n: int, gen: torch.Generator, device="cpu", dtype=torch.float32):
    """Leaf tensors (R, L, H, D) and their (R, H, L, D) views, as the model's attention produces them."""
    leaves = [torch.randn(r, n, HEADS, HEAD_DIM, generator=gen).to(device, dtype) for _ in range(3)]
    return leaves, [x.transpose(1, 2) for x in leaves]


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Random values for every parameter (the model zero-initialises AdaLN and its output layers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            std = p.shape[-1] ** -0.5 if p.dim() >= 2 else 0.2
            p.copy_(torch.randn(p.shape, generator=g) * std)


def _model_inputs(batch, seed: int):
    g = torch.Generator().manual_seed(seed)
    patches = batch.patches.clone()
    noisy = batch.layout.noisy
    patches[noisy] = torch.randn(patches[noisy].shape, generator=g)
    t = torch.rand(batch.block_label.numel(), generator=g)
    return patches, t


# --------------------------------------------------------------------------------------------
# (1) FlexAttention vs dense SDPA on CPU, one shape


def test_layout_is_realistic():
    batch = _batch()
    lay = batch.layout
    assert lay.shape == (2, FLEX_TILE)
    assert (lay.doc == -1).any(dim=1).all(), "both rows end in padding"
    assert len(set(lay.doc[0].tolist()) - {-1}) == 3, "several documents in one row"
    assert lay.noisy.any() and (lay.modality == TEXT).any() and (lay.modality == VISUAL).any()


def test_flex_matches_dense_forward():
    lay = _batch().layout
    f = Fields.of(lay)
    r, n = lay.shape
    _, (q, k, v) = _qkv(r, n, torch.Generator().manual_seed(0))
    out_flex = AttentionPlan(f, f, "flex")(q, k, v)
    out_dense = AttentionPlan(f, f, "dense")(q, k, v)
    assert out_flex.shape == out_dense.shape == (r, HEADS, n, HEAD_DIM)
    real = (lay.doc >= 0)[:, None, :, None].expand_as(out_dense)
    torch.testing.assert_close(out_flex[real], out_dense[real], atol=1e-5, rtol=0)
    # padding rows attend to themselves only: the output is their own value, on both backends
    pad = ~real
    torch.testing.assert_close(out_dense[pad], v[pad], atol=1e-6, rtol=0)
    torch.testing.assert_close(out_flex[pad], out_dense[pad], atol=1e-5, rtol=0)
    assert torch.isfinite(out_flex).all()


def test_flex_backward_on_cpu_is_a_clear_error():
    """torch's FlexAttention has no CPU backward: asking for one names the way out instead of
    failing deep inside torch (the gradients themselves are compared on CUDA, below)."""
    lay = _batch().layout
    f = Fields.of(lay)
    r, n = lay.shape
    leaves, _ = _qkv(r, n, torch.Generator().manual_seed(1))
    xs = [x.clone().requires_grad_(True) for x in leaves]
    with pytest.raises(RuntimeError, match="no backward on CPU"):
        AttentionPlan(f, f, "flex")(*(x.transpose(1, 2) for x in xs))


# --------------------------------------------------------------------------------------------
# (2) the whole model: cfg.attention="flex" vs "dense" (same shapes as above: no recompile)


def test_model_flex_matches_dense(monkeypatch):
    batch = _batch()
    cfg = ModelConfig.from_preset("micro", dim=HEADS * HEAD_DIM, heads=HEADS, depth=2, attention="flex")
    model_flex = UnifiedModel(cfg).eval()
    _randomize(model_flex, seed=2)
    model_dense = UnifiedModel(dataclasses.replace(cfg, attention="dense")).eval()
    model_dense.load_state_dict(model_flex.state_dict())
    patches, t = _model_inputs(batch, seed=3)

    import torch.nn.attention.flex_attention as fa

    calls = {"block_mask": 0, "flex": 0}
    create_block_mask, compiled = fa.create_block_mask, backends._compiled_flex()

    def counting_block_mask(*a, **kw):
        calls["block_mask"] += 1
        return create_block_mask(*a, **kw)

    def counting_flex(*a, **kw):
        calls["flex"] += 1
        return compiled(*a, **kw)

    monkeypatch.setattr(fa, "create_block_mask", counting_block_mask)
    monkeypatch.setattr(backends, "_compiled_flex", lambda: counting_flex)
    with torch.no_grad():
        out_flex = model_flex(batch.tokens, patches, batch.layout, t=t, labels=batch.block_label)
        assert calls == {"block_mask": 1, "flex": cfg.depth}, f"flex not used as expected: {calls}"
        out_dense = model_dense(batch.tokens, patches, batch.layout, t=t, labels=batch.block_label)
    assert calls["flex"] == cfg.depth, "the dense model must not call FlexAttention"
    assert out_flex.pred.shape == out_dense.pred.shape and out_flex.pred.shape[0] > 0
    assert out_flex.text_logits.shape == out_dense.text_logits.shape and out_flex.text_logits.shape[0] > 0
    torch.testing.assert_close(out_flex.pred, out_dense.pred, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out_flex.text_logits, out_dense.text_logits, atol=1e-4, rtol=1e-4)
    real = batch.layout.doc >= 0
    scale = out_dense.hidden[real].abs().max().item()
    torch.testing.assert_close(out_flex.hidden[real], out_dense.hidden[real], atol=1e-5 * max(1.0, scale), rtol=1e-5)


# --------------------------------------------------------------------------------------------
# (3) CUDA: xformers and FlexAttention vs dense SDPA (skip without CUDA / xformers)


def _tolerance(dtype: torch.dtype) -> float:
    return 2e-4 if dtype == torch.float32 else 2e-2


def _cuda_check(backend: str, dtype: torch.dtype, pad_multiple: int) -> None:
    """Forward and backward of `backend` in `dtype` on CUDA vs the dense SDPA reference in float64
    on the same (dtype-rounded) inputs; the error may not exceed a dtype tolerance, or twice the
    error of dense SDPA itself in `dtype`, whichever is larger."""
    dev = torch.device("cuda")
    lay = _batch(pad_multiple).layout.to(dev)
    f = Fields.of(lay)
    r, n = lay.shape
    gen = torch.Generator().manual_seed(4)
    leaves, _ = _qkv(r, n, gen, dev, dtype)
    weight = torch.randn(r, HEADS, n, HEAD_DIM, generator=gen).to(dev, torch.float64)

    def run(name: str, dt: torch.dtype):
        xs = [x.detach().to(dt).requires_grad_(True) for x in leaves]
        out = AttentionPlan(f, f, name)(*(x.transpose(1, 2) for x in xs))
        assert out.dtype == dt and out.device.type == "cuda"
        grads = torch.autograd.grad((out.double() * weight).sum(), xs)
        return [out.double()] + [g.double() for g in grads]

    ref = run("dense", torch.float64)
    base = run("dense", dtype)
    got = run(backend, dtype)
    for what, a, b, c in zip(("out", "grad q", "grad k", "grad v"), got, base, ref, strict=True):
        scale = max(1.0, c.abs().max().item())
        err = (a - c).abs().max().item() / scale
        base_err = (b - c).abs().max().item() / scale
        tol = max(_tolerance(dtype), 2 * base_err)
        assert err <= tol, f"{backend} {dtype} {what}: error {err:.3g} > {tol:.3g} (dense SDPA: {base_err:.3g})"


@needs_cuda
@pytest.mark.parametrize("pad_multiple", [FLEX_TILE, 1], ids=["L128", "L_unpadded"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_xformers_matches_dense_cuda(dtype, pad_multiple):
    pytest.importorskip("xformers.ops", reason="xformers is not installed")
    assert backends.xformers_available(), backends.xformers_problem()
    if pad_multiple == 1:
        assert _batch(1).layout.shape[1] % 8 != 0, "want a key length that is not a multiple of 8"
    _cuda_check("xformers", dtype, pad_multiple)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_flex_matches_dense_cuda(dtype):
    _cuda_check("flex", dtype, FLEX_TILE)


@needs_cuda
@pytest.mark.parametrize("backend", ["flex", "xformers"])
def test_model_backend_matches_dense_cuda(backend):
    """A whole training step on CUDA in fp32: outputs and parameter gradients match dense."""
    if backend == "xformers":
        pytest.importorskip("xformers.ops", reason="xformers is not installed")
    dev = torch.device("cuda")
    batch = _batch().to(dev)
    cfg = ModelConfig.from_preset("micro", dim=HEADS * HEAD_DIM, heads=HEADS, depth=2, attention=backend)
    model = UnifiedModel(cfg)
    _randomize(model, seed=5)
    model_dense = UnifiedModel(dataclasses.replace(cfg, attention="dense"))
    model_dense.load_state_dict(model.state_dict())
    patches, t = _model_inputs(batch.to("cpu"), seed=6)
    patches, t = patches.to(dev), t.to(dev)
    results = []
    for m in (model.to(dev), model_dense.to(dev)):
        out = m(batch.tokens, patches, batch.layout, t=t, labels=batch.block_label)
        (out.pred.pow(2).mean() + out.text_logits.logsumexp(-1).mean()).backward()
        results.append((out, {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}))
    (out_b, grads_b), (out_d, grads_d) = results
    torch.testing.assert_close(out_b.pred, out_d.pred, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(out_b.text_logits, out_d.text_logits, atol=1e-3, rtol=1e-3)
    assert grads_b.keys() == grads_d.keys() and grads_b
    for k in grads_d:
        scale = max(1.0, grads_d[k].abs().max().item())
        torch.testing.assert_close(grads_b[k], grads_d[k], atol=1e-3 * scale, rtol=1e-3, msg=lambda m, k=k: f"{k}: {m}")


# --------------------------------------------------------------------------------------------
# (4) resolve_backend


@pytest.mark.parametrize("length", [1, 128, 2047])
def test_auto_is_dense_for_short_cpu_rows(length):
    assert resolve_backend("auto", length, torch.device("cpu")) == "dense"


@pytest.mark.parametrize("length", [2048, 8192])
def test_auto_is_flex_for_long_cpu_rows_without_gradients(length):
    assert resolve_backend("auto", length, torch.device("cpu")) == "flex"
    assert resolve_backend("auto", length, torch.device("cpu"), needs_grad=True) == "dense"


@pytest.mark.parametrize("length", [4096, 8192])
def test_auto_is_flex_for_long_cuda_rows(length):
    # only the device type is consulted: no GPU needed; gradients or not
    assert resolve_backend("auto", length, torch.device("cuda", 0)) == "flex"
    assert resolve_backend("auto", length, torch.device("cuda", 0), needs_grad=True) == "flex"


@pytest.mark.parametrize("length", [1, 96, 4095])
def test_auto_is_dense_for_short_cuda_rows(length):
    assert resolve_backend("auto", length, torch.device("cuda", 0), needs_grad=True) == "dense"


@pytest.mark.parametrize("name", ["dense", "flex"])
def test_explicit_backend_is_kept(name):
    for dev in ("cpu", "cuda"):
        for length in (16, 4096):
            assert resolve_backend(name, length, torch.device(dev)) == name


@pytest.mark.parametrize("name", ["sdpa", "Dense", "", "flash"])
def test_unknown_backend_raises_value_error(name):
    with pytest.raises(ValueError, match="attention backend"):
        resolve_backend(name, 16, torch.device("cpu"))
    with pytest.raises(ValueError):
        ModelConfig.from_preset("micro", attention=name)
    f = Fields.of(_batch(1).layout)
    with pytest.raises(ValueError):
        AttentionPlan(f, f, name)


def test_xformers_without_cuda_raises_runtime_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="xformers"):
        resolve_backend("xformers", 16, torch.device("cpu"))


def test_xformers_without_package_raises_runtime_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "xformers", None)  # makes `import xformers.ops` fail
    monkeypatch.setitem(sys.modules, "xformers.ops", None)
    with pytest.raises(RuntimeError, match="xformers"):
        resolve_backend("xformers", 16, torch.device("cuda"))


def test_xformers_without_kernels_raises_runtime_error(monkeypatch):
    """A wheel built for another torch imports but has no kernels: refused up front, with why."""
    xformers = pytest.importorskip("xformers")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(xformers, "_has_cpp_library", False)
    with pytest.raises(RuntimeError, match="no compiled kernels"):
        resolve_backend("xformers", 16, torch.device("cuda"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the real no-CUDA machine")
def test_xformers_on_this_cpu_machine_raises():
    assert not backends.xformers_available()
    with pytest.raises(RuntimeError):
        resolve_backend("xformers", 16, torch.device("cpu"))


def test_auto_backend_trains_on_long_cpu_rows():
    """`attention="auto"` on a CPU row of >= 2048 tokens gives a model that trains (dense SDPA,
    since FlexAttention has no CPU backward), while inference on such rows uses FlexAttention."""
    enc = [encode_document(d, PATCH, SPEC) for d in _documents()[:1]]
    cfg = ModelConfig.from_preset("micro", depth=1, attention="auto")
    batch = pack(enc, cfg.patch_dim, pad_multiple=2048)
    assert batch.layout.shape[1] >= 2048
    model = UnifiedModel(cfg).train()
    out = losses(model, batch, Diffusion("flow"), generator=torch.Generator().manual_seed(7))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(p.grad is not None for p in model.blocks[0].attn.qkv.parameters())


# --------------------------------------------------------------------------------------------
# (5) the dense mask is built once per forward, never per layer


@pytest.mark.parametrize("attention", ["dense", "auto"])
def test_dense_mask_built_once_per_forward(monkeypatch, attention):
    calls = []

    def counting(q, k):
        calls.append(q.doc.shape)
        return dense_mask(q, k)

    monkeypatch.setattr(backends, "dense_mask", counting)
    cfg = ModelConfig.from_preset("micro", depth=3, attention=attention, grad_checkpointing=True)
    model = UnifiedModel(cfg).train()
    _randomize(model, seed=8)
    batch = _batch(1)
    patches, t = _model_inputs(batch, seed=9)
    out = model(batch.tokens, patches, batch.layout, t=t)
    assert len(calls) == 1, f"dense mask built {len(calls)} times in one forward of {cfg.depth} layers"
    # backward recomputes the checkpointed layers; it must reuse the plan, not rebuild the mask
    (out.pred.pow(2).mean() + out.text_logits.logsumexp(-1).mean()).backward()
    assert len(calls) == 1, f"dense mask rebuilt during backward ({len(calls)} builds)"
    with torch.no_grad():
        model.eval()(batch.tokens, patches, batch.layout, t=t)
    assert len(calls) == 2, "one more forward, one more mask"
