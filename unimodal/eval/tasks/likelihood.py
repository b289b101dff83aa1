"""Likelihood tasks: `text-ppl` (perplexity of held-out captions) and `val-loss` (held-out text
and image losses, as training reports them).

Held-out text: the captions of the test split of the data the model's shape implies: shapes
scenes (RGB, >= 30 px), single shapes (RGB, 16-29 px), shapes video (clips), digits (8x8 grey).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ...documents import Document, Text
from .base import NONE, Skip, chunks, is_digits_model, need_text, recipe, shapes_options, task


def heldout_source(cfg) -> tuple[str, str | None, dict[str, Any]]:
    """(builtin, task, options) of the held-out data for a model's shape."""
    if is_digits_model(cfg):
        return "digits", None, {}
    if cfg.channels == 3 and cfg.frames > 1 and cfg.image_size >= 16:
        return "shapes", "video", {"image_size": cfg.image_size, "frames": cfg.frames}
    if cfg.channels == 3 and cfg.image_size >= 30:
        return "shapes", "scenes", {"image_size": cfg.image_size}
    if cfg.channels == 3 and cfg.image_size >= 16:
        return "shapes", "t2i", {"image_size": cfg.image_size}
    return "shapes", "scenes", {}  # text only: the default scenes' captions


def heldout_captions(pipe, n: int) -> tuple[list[str], dict[str, Any]]:
    from ...data import load_builtin

    builtin, kind, opts = heldout_source(pipe.cfg)
    if builtin == "shapes":
        opts = {**shapes_options(pipe), **opts}
    docs = load_builtin(builtin, split="test", task=kind, seed=0, n=n, **opts)
    captions = [" ".join(t.text for t in d.texts) for d in docs]
    name = builtin if kind is None else f"{builtin}/{kind}"
    return captions, {"data": name, "split": "test", "dataset_seed": 0}


def caption_nll(pipe, captions: list[str]) -> tuple[float, int]:
    """(summed next-token NLL, number of predicted tokens) of `<bos> caption <eos>` for every
    caption, through the full forward (no cache): every token after `<bos>` is predicted."""
    total, count = 0.0, 0
    for r in chunks(len(captions), 64):
        logp, _, _ = pipe.text_logprobs([Document([Text(captions[i])]) for i in r])
        total, count = total - float(logp.sum()), count + logp.numel()
    return total, count


@task("text-ppl", samples=256, description="perplexity of held-out captions: exp(mean NLL per token)", generation=NONE)
def text_ppl(pipe, samples, seed, num_steps, guidance, sampler):
    need_text(pipe, "text-ppl")
    captions, record = heldout_captions(pipe, samples)
    total, count = caption_nll(pipe, captions)
    nll = total / max(count, 1)
    record["sequence"] = "<bos> caption <eos>; every token after <bos> predicted"
    return {"perplexity": math.exp(nll), "nll": nll, "tokens": count, "n": len(captions), "record": record}


# ------------------------------------------------------------------------------------ val-loss

MAX_BATCH = 32


def val_data_config(pipe, samples: int, seed: int):
    """The held-out DataConfig: the run recipe's `eval_data`, or the test split of its training
    data (dropouts off, its other collation kept); without a recipe, the test split of the data
    the model's shape implies, half the pairs image-first (so text losses cover prompts and
    captions). `seed` seeds the order and each document's diffusion time and noise."""
    from ...data.pipeline import DataConfig

    bs = min(MAX_BATCH, samples)
    r = recipe(pipe)
    if r is not None:
        d = r.eval_data or r.data
        split = d.split if r.eval_data is not None else "test"
        collate = {**d.collate, "prompt_dropout": 0.0, "label_dropout": 0.0}
        return DataConfig(
            builtin=d.builtin,
            task=d.task,
            n=d.n,
            split=split,
            options=dict(d.options),
            source=d.source,
            batch_size=bs,
            seed=seed,
            collate=collate,
        ), "recipe"
    builtin, kind, opts = heldout_source(pipe.cfg)
    collate = {"image_first_rate": 0.5}
    return DataConfig(
        builtin=builtin, task=kind, split="test", options=opts, batch_size=bs, seed=seed, collate=collate
    ), "inferred from the model's shape"


@torch.no_grad()
def held_out_losses(model, stream, diffusion, batches: int) -> dict[str, Any]:
    """Target-weighted mean text and image losses over `batches` batches of a stream (each
    document's diffusion time and noise seeded by its key)."""
    from ...diffusion import losses

    dev = next(model.parameters()).device
    sums = {"text": 0.0, "image": 0.0}
    counts = {"text": 0, "image": 0}
    docs = 0
    for _ in range(batches):
        batch = next(stream).to(dev)
        out = losses(model, batch, diffusion)
        docs += len(batch.doc_keys) if batch.doc_keys is not None else 0
        for k in sums:
            n = int(out[f"{k}_count"])
            sums[k] += out[k].item() * n
            counts[k] += n
    return {
        "text_loss": sums["text"] / counts["text"] if counts["text"] else None,
        "image_loss": sums["image"] / counts["image"] if counts["image"] else None,
        "text_targets": counts["text"],
        "image_targets": counts["image"],
        "documents": docs,
    }


@task(
    "val-loss",
    samples=256,
    description="held-out text and image losses with per-document seeded noise",
    generation=NONE,
)
def val_loss(pipe, samples, seed, num_steps, guidance, sampler):
    from ...data.pipeline import batch_stream
    from ...diffusion import Diffusion

    if pipe.tokenizer is None:
        raise Skip("val-loss collates held-out documents, which needs the model's tokenizer; this model has none")
    cfg, source = val_data_config(pipe, samples, seed)
    try:
        stream = batch_stream(cfg, pipe.tokenizer, pipe.cfg)
    except (KeyError, TypeError, ValueError, FileNotFoundError) as e:
        raise Skip(f"val-loss: the held-out data cannot be loaded: {e}") from None
    batches = max(1, samples // cfg.batch_size)
    out = held_out_losses(pipe.model, stream, Diffusion(pipe.cfg.diffusion), batches)
    name = cfg.builtin or (cfg.source or {}).get("name", "files")
    record = {
        "data": name if cfg.task is None else f"{name}/{cfg.task}",
        "split": cfg.split,
        "data_from": source,
        "batch_size": cfg.batch_size,
        "batches": batches,
        "collate": cfg.collate,
        "diffusion": pipe.cfg.diffusion,
        "noise": "per document, seeded by (seed, batch, index)",
    }
    return {**out, "record": record}
