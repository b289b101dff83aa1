"""The incremental KV-cached forward, fed documents unit by unit, equals the full training forward."""

import numpy as np
import pytest
import torch

from unimodal import Document, Image, ModelConfig, Text, UnifiedModel
from unimodal.diffusion import Diffusion, noise_batch
from unimodal.layout import PAD, TEXT, Layout, encode_document, pack


def random_model(cfg: ModelConfig) -> UnifiedModel:
    """Random weights everywhere: the default zero-init would leave AdaLN and the heads trivial."""
    model = UnifiedModel(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def image(seed: int, size: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def schedule(lay: Layout, row: int) -> list[tuple[list[int], list[bool]]]:
    """The generation order of one row: (token indices, commit flags) per step.

    Text token: one step, committed. Visual block k: a denoising step on its noisy copy; the clean
    block is then committed fused with the next block's first step, or alone before text/the end.
    """
    doc, unit, noisy, mod = lay.doc[row], lay.unit[row], lay.noisy[row], lay.modality[row]
    units = sorted({int(u) for u, d in zip(unit, doc, strict=True) if d >= 0})
    toks = {u: [i for i in range(len(unit)) if doc[i] >= 0 and unit[i] == u] for u in units}
    steps, pending = [], []  # pending: clean tokens of the previous block, not yet committed
    for u in units:
        ids = toks[u]
        if mod[ids[0]] == TEXT:
            if pending:
                steps.append((pending, [True] * len(pending)))
                pending = []
            steps.append((ids, [True]))
            continue
        clean = [i for i in ids if not noisy[i]]
        noisy_ids = [i for i in ids if noisy[i]]
        steps.append((pending + noisy_ids, [True] * len(pending) + [False] * len(noisy_ids)))
        pending = clean
    if pending:
        steps.append((pending, [True] * len(pending)))
    return steps


def step_layout(lay: Layout, rows: list[tuple[list[int], list[bool]] | None]):
    """Gather one step of every row, right-padded with padding tokens; returns (idx, layout, commit)."""
    n = max(len(r[0]) for r in rows if r is not None)
    idx = torch.zeros(len(rows), n, dtype=torch.long)
    real = torch.zeros(len(rows), n, dtype=torch.bool)
    commit = torch.zeros(len(rows), n, dtype=torch.bool)
    for b, r in enumerate(rows):
        if r is None:
            continue
        idx[b, : len(r[0])] = torch.tensor(r[0])
        real[b, : len(r[0])] = True
        commit[b, : len(r[1])] = torch.tensor(r[1])
    sub = lay.index(idx)
    sub = Layout(
        torch.where(real, sub.doc, -1),
        sub.unit,
        torch.where(real, sub.stream, 0),
        torch.where(real, sub.modality, PAD),
        sub.pos,
        torch.where(real, sub.block, -1),
        sub.origin,
    )
    return idx, real, sub, commit


def run_and_compare(cfg: ModelConfig, docs: list[Document]):
    torch.manual_seed(0)
    model = random_model(cfg)
    enc = [encode_document(d, cfg.patch_size, cfg.block_spec) for d in docs]
    batch = pack(enc, cfg.patch_dim)
    lay = batch.layout
    nb = noise_batch(batch, Diffusion(cfg.diffusion), torch.Generator().manual_seed(2))
    labels = batch.block_label
    with torch.no_grad():
        full = model(batch.tokens, nb.patches, lay, t=nb.t, labels=labels, backend="dense")
    # map the full forward's outputs back to token positions
    pred_full = torch.zeros(*lay.shape, cfg.patch_dim)
    pred_full[lay.noisy] = full.pred
    text_mask = (lay.modality == TEXT) & ~lay.noisy
    logits_full = torch.zeros(*lay.shape, cfg.vocab_size)
    if cfg.vocab_size:
        logits_full[text_mask] = full.text_logits

    scheds = [schedule(lay, r) for r in range(lay.shape[0])]
    cache = model.new_cache(lay.shape[0], max_len=lay.shape[1])
    n_steps = max(len(s) for s in scheds)
    checked_pred = checked_text = 0
    for s in range(n_steps):
        rows = [sc[s] if s < len(sc) else None for sc in scheds]
        idx, real, sub, commit = step_layout(lay, rows)
        tokens = batch.tokens.gather(1, idx)
        patches = nb.patches.gather(1, idx.unsqueeze(-1).expand(-1, -1, cfg.patch_dim))
        with torch.no_grad():
            out = model(tokens, patches, sub, t=nb.t, labels=labels, cache=cache, commit=commit)
        if out.pred is not None:
            expect = pred_full.gather(1, idx.unsqueeze(-1).expand(-1, -1, cfg.patch_dim))[sub.noisy]
            torch.testing.assert_close(out.pred, expect, rtol=1e-5, atol=1e-5 * expect.abs().max().item())
            checked_pred += out.pred.shape[0]
        step_text = (sub.modality == TEXT) & ~sub.noisy
        if step_text.any():
            expect = logits_full.gather(1, idx.unsqueeze(-1).expand(-1, -1, cfg.vocab_size))[step_text]
            torch.testing.assert_close(out.text_logits, expect, rtol=1e-5, atol=1e-5 * expect.abs().max().item())
            checked_text += expect.shape[0]
    # every noisy token and every text token of the batch was checked, and everything clean is cached
    assert checked_pred == int(lay.noisy.sum())
    assert checked_text == int(text_mask.sum())
    assert cache.length.tolist() == [int(((lay.doc[r] >= 0) & ~lay.noisy[r]).sum()) for r in range(lay.shape[0])]


@pytest.mark.parametrize("block_size", [1, 2, 4], ids=["1-patch", "few", "whole-image"])
def test_cached_equals_full_forward(block_size):
    """Text -> image -> text and image -> text documents of different lengths, batched."""
    cfg = ModelConfig.from_preset("micro", block_size=block_size, num_classes=0)
    docs = [
        Document([Text(ids=[1, 2, 3]), Image(image(0, 8)), Text(ids=[4, 5])]),
        Document([Image(image(1, 8)), Text(ids=[7, 8, 9, 10, 11])]),
        Document([Text(ids=[3]), Image(image(2, 8)), Image(image(3, 8)), Text(ids=[6])]),
    ]
    run_and_compare(cfg, docs)


def test_cached_equals_full_forward_class_conditional_video():
    """Class labels through AdaLN, a clip cut into blocks of whole frames, no text at all."""
    cfg = ModelConfig.from_preset(
        "micro", vocab_size=0, num_classes=5, frames=4, block_kind="frames", block_size=2, diffusion="ddpm_eps"
    )
    clip = np.random.default_rng(5).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    docs = [Document([Image(clip)], label=3), Document([Image(clip[::-1].copy())], label=1)]
    run_and_compare(cfg, docs)


def test_cache_refuses_noisy_commit_and_overflow():
    cfg = ModelConfig.from_preset("micro")
    model = random_model(cfg)
    batch = pack([encode_document(Document([Image(image(0, 8))]), 2, cfg.block_spec)], cfg.patch_dim)
    lay = batch.layout
    cache = model.new_cache(1, max_len=2)
    t = torch.zeros(batch.block_label.numel())
    with pytest.raises(ValueError, match="only clean tokens"):
        model(batch.tokens, batch.patches, lay, t=t, cache=cache, commit=lay.noisy.clone())
    with pytest.raises(RuntimeError, match="KV cache full"):
        model(batch.tokens, batch.patches, lay, t=t, cache=cache, commit=~lay.noisy)


def test_adaln_memo_equals_fresh_tables_and_follows_weight_updates():
    """Without gradients the AdaLN rows are remembered per (t, label): outputs equal the gradient
    path's fresh computation, and an in-place weight update (an optimizer step, load_state_dict)
    or a cast is never served stale rows."""
    cfg = ModelConfig.from_preset("micro", vocab_size=32, num_classes=5, image_size=8)
    model = random_model(cfg)
    docs = [Document([Text(ids=[1, 2]), Image(image(i, 8))], label=i) for i in range(3)]
    batch = pack([encode_document(d, cfg.patch_size, cfg.block_spec) for d in docs], cfg.patch_dim)
    nb = noise_batch(batch, Diffusion("ddpm_eps"), torch.Generator().manual_seed(0))
    t = torch.tensor([10, 500, 10, 999] * (batch.block_label.numel() // 4) + [7] * (batch.block_label.numel() % 4))
    args = (batch.tokens, nb.patches, batch.layout, t, batch.block_label)

    def fresh():  # the gradient path computes every table from scratch
        with torch.enable_grad():
            return model(*args).pred.detach()

    with torch.no_grad():
        first = model(*args).pred
        again = model(*args).pred  # served from the memo
    torch.testing.assert_close(first, fresh(), rtol=1e-6, atol=1e-6)
    assert torch.equal(first, again)
    with torch.no_grad():
        model.blocks[0].adaLN_modulation[1].weight.mul_(1.5)  # in place, as an optimizer step
        model.t_embedder.mlp[0].bias.add_(0.1)
        changed = model(*args).pred
    assert (changed - first).abs().max() > 1e-3
    torch.testing.assert_close(changed, fresh(), rtol=1e-6, atol=1e-6)
    model.to(torch.float64)  # new weight tensors: the memo's float32 rows must not be reused
    with torch.no_grad():
        tables, head = model.adaln_tables(t, batch.block_label)
    assert tables[0].dtype == head.dtype == torch.float64


def test_adaln_memo_bound_clears_without_losing_rows(monkeypatch):
    """A memo that reaches its bound mid-call is cleared and the call still returns every row
    (a validation pass with a new random t per block filled it and lost rows it had just read)."""
    cfg = ModelConfig.from_preset("micro", vocab_size=32, num_classes=5, image_size=8)
    model = random_model(cfg)
    pair = (cfg.depth * 6 + 2) * cfg.dim * 4  # bytes of one (t, label)'s rows
    monkeypatch.setattr(UnifiedModel, "ADALN_MEMO_BYTES", 6 * pair)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.adaln_tables(torch.tensor([0.5, 0.25]), torch.tensor([1, 2]))  # two rows and their table
        for _ in range(3):  # the two remembered rows and six new ones: the bound is passed mid-call
            t = torch.cat([torch.tensor([0.5, 0.25]), torch.rand(6, generator=g)])
            labels = torch.tensor([1, 2, 3, 4, 0, 1, 2, 3])
            tables, head = model.adaln_tables(t, labels)
            with torch.enable_grad():
                fresh, fresh_head = model.adaln_tables(t, labels)
            # rows computed in batches of other sizes: float32 rounding only
            torch.testing.assert_close(head, fresh_head.detach(), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(tables[0], fresh[0].detach(), rtol=1e-4, atol=1e-5)


def test_reused_plan_equals_fresh_forwards_and_refuses_stale_use():
    """A sampler's steps share one ForwardPlan: same outputs as planning every step; a committing
    plan runs once, and a plan whose cache rows grew is refused."""
    cfg = ModelConfig.from_preset("micro", num_classes=0)
    model = random_model(cfg)
    doc = Document([Text(ids=[1, 2, 3]), Image(image(0, 8))])
    batch = pack([encode_document(doc, cfg.patch_size, cfg.block_spec)], cfg.patch_dim)
    lay = batch.layout
    prefix = torch.tensor([[0, 1, 2]])  # the text, committed first
    block0 = ((lay.block == 0) & lay.noisy).nonzero()[:, 1].unsqueeze(0)
    cache = model.new_cache(1, max_len=lay.shape[1])
    sub = lay.index(prefix)
    with torch.no_grad():
        model(batch.tokens.gather(1, prefix), batch.patches[:, :3], sub, cache=cache, commit=~sub.noisy)
        noisy = lay.index(block0)
        plan = model.plan(noisy, cache)
        g = torch.Generator().manual_seed(0)
        for t in (0.9, 0.5, 0.1):
            x = torch.randn(1, block0.shape[1], cfg.patch_dim, generator=g)
            tt = torch.tensor([t] * int(batch.block_label.numel()))
            fresh = model(batch.tokens.gather(1, block0), x, noisy, t=tt, cache=cache)
            planned = model(batch.tokens.gather(1, block0), x, noisy, t=tt, plan=plan)
            torch.testing.assert_close(planned.pred, fresh.pred, rtol=0, atol=0)
        with pytest.raises(ValueError, match="another layout"):
            model(batch.tokens.gather(1, block0), x, lay.index(block0), t=tt, plan=plan)
        committing = model.plan(sub, cache, commit=~sub.noisy)
        model(batch.tokens.gather(1, prefix), batch.patches[:, :3], sub, plan=committing)
        with pytest.raises(RuntimeError, match="only one forward"):
            model(batch.tokens.gather(1, prefix), batch.patches[:, :3], sub, plan=committing)
        assert not plan.reusable()
        with pytest.raises(RuntimeError, match="changed since it was built"):
            model(batch.tokens.gather(1, block0), x, noisy, t=tt, plan=plan)


def test_cached_equals_full_forward_with_absolute_positions():
    """abs_pos "sincos": the incremental path adds each visual token's table row as training does,
    for images after text and for clips cut into frames."""
    cfg = ModelConfig.from_preset("micro", block_size=2, num_classes=0, abs_pos="sincos")
    docs = [
        Document([Text(ids=[1, 2, 3]), Image(image(0, 8)), Text(ids=[4, 5])]),
        Document([Image(image(1, 8)), Text(ids=[7, 8, 9, 10, 11])]),
    ]
    run_and_compare(cfg, docs)
    video = ModelConfig.from_preset(
        "micro", vocab_size=0, num_classes=5, frames=4, block_kind="frames", block_size=2, abs_pos="sincos"
    )
    clip = np.random.default_rng(5).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    run_and_compare(video, [Document([Image(clip)], label=3)])


@pytest.mark.parametrize("prediction", ["sample", "preconditioned"])
def test_cached_equals_full_forward_with_sample_prediction(prediction):
    """prediction "sample" and "preconditioned": the velocity is computed from x̂0 and each noisy
    token's own x_t and t, the same in the incremental path as in training."""
    cfg = ModelConfig.from_preset("micro", block_size=2, num_classes=0, prediction=prediction)
    docs = [
        Document([Text(ids=[1, 2, 3]), Image(image(0, 8)), Text(ids=[4, 5])]),
        Document([Image(image(1, 8)), Image(image(2, 8)), Text(ids=[7, 8])]),
    ]
    run_and_compare(cfg, docs)


def test_absolute_positions_are_dits_table_and_reach_the_output():
    """The table is DiT's sin-cos per axis; toggling it with the same weights changes predictions
    of visual tokens only where positions differ."""
    from unimodal.abs_pos import axis_sizes, sincos_positions

    assert axis_sizes(256) == (88, 84, 84)
    local = torch.tensor([[0, 2, 5]])
    table = sincos_positions(local, 256)[0]
    t, h, w = table[:88], table[88:172], table[172:]
    assert torch.equal(t[:44], torch.zeros(44)) and torch.equal(t[44:], torch.ones(44))
    freq = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(42) / 42)
    torch.testing.assert_close(h, torch.cat([(2 * freq).sin(), (2 * freq).cos()]))
    torch.testing.assert_close(w, torch.cat([(5 * freq).sin(), (5 * freq).cos()]))
    base = ModelConfig.from_preset("micro", num_classes=0)
    with_pos = ModelConfig.from_preset("micro", num_classes=0, abs_pos="sincos")
    a, b = random_model(base), UnifiedModel(with_pos).eval()
    b.load_state_dict(a.state_dict())
    batch = pack(
        [encode_document(Document([Text(ids=[1, 2]), Image(image(0, 8))]), 2, base.block_spec)], base.patch_dim
    )
    t = torch.full((batch.block_label.numel(),), 0.5)
    with torch.no_grad():
        pa = a(batch.tokens, batch.patches, batch.layout, t=t, backend="dense")
        pb = b(batch.tokens, batch.patches, batch.layout, t=t, backend="dense")
    assert (pa.pred - pb.pred).abs().max() > 1e-3
    text = (batch.layout.modality == TEXT) & ~batch.layout.noisy
    torch.testing.assert_close(pa.hidden[text], pb.hidden[text])  # text before the image: untouched
