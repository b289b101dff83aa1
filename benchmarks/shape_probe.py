"""Which attribute a shapes model gets wrong when it draws one object: the shape confusion matrix.

    python benchmarks/shape_probe.py runs/main --out benchmarks/results/main_job/shape_probe.json

Prompts every combination of colour, shape and size at two cells ("a small red circle at the top
left", ...: 8 x 3 x 2 x 2 = 96 prompts), draws each once (seed i for prompt i) with the model's
sampler, and reads the images back with the shapes judge. Over the images that show exactly one
object it reports the share with the prompt's colour, shape, size and cell, and all four; and the
confusion matrix of shapes (rows: asked, columns: drawn). The scenes evaluation
(`shapes-scenes-t2i`, `by_attribute`) says how often an attribute fails among several objects;
this isolates the attribute from counting and placement, one object on an empty canvas.

Two more measurements say which side fails. `captioning`: the same 96 objects rendered exactly
and captioned by the model (greedy), the share of captions naming each attribute right, and the
shape confusion of what it reads. `word_sensitivity`: the model's clean-image prediction x̂0 for
these images noised to t (flow models), once with the true caption and once with the shape (or
the colour) word replaced by another; the mean squared error at the tokens holding the object.
A model that uses a word predicts worse when that word is wrong; one that ignores it does not.
Beside them, the error of x_t itself: where x̂0 is worse than its input, the model blurs.
One JSON object goes to stdout and to `--out`.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

from common import write_json

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from unimodal.configtools import apply_overrides  # noqa: E402
from unimodal.data.shapes.parsing import parse_caption  # noqa: E402
from unimodal.data.shapes.render import render_scene  # noqa: E402
from unimodal.data.shapes.world import BACKGROUND, COLORS, SHAPES, SIZES  # noqa: E402
from unimodal.documents import Document, Image, Text  # noqa: E402
from unimodal.eval.shapes import judge  # noqa: E402
from unimodal.eval.tasks.shapes import generate_images  # noqa: E402
from unimodal.generation import Engine  # noqa: E402
from unimodal.layout import VisualSegment  # noqa: E402
from unimodal.pipeline import Pipeline, _generators, _guidance  # noqa: E402

ATTRIBUTES = ("color", "shape", "size", "position")
NOISE_LEVELS = (0.05, 0.1, 0.3, 0.5, 0.7, 0.9)


def prompt(a: dict, **swap: str) -> str:
    a = {**a, **swap}
    return f"a {a['size']} {a['color']} {a['shape']} at the {a['position']}"


def confusion_of(pairs: list[tuple[str, str | None]]) -> dict[str, dict[str, int]]:
    """Rows: the shape asked or shown; columns: the shape drawn or read (None: not read)."""
    out = {s: dict.fromkeys((*SHAPES, "none"), 0) for s in SHAPES}
    for asked, got in pairs:
        out[asked][got or "none"] += 1
    return out


def captioning(pipe: Pipeline, asked: list[dict], images: list) -> dict:
    """Per-attribute accuracy of the model's captions of exactly rendered objects."""
    objects = []
    for text in pipe.caption(images):
        spec = parse_caption(text, strict=False)
        objects.append(spec["objects"][0] if spec and spec["objects"] else {})
    pairs = list(zip(asked, objects, strict=True))
    right = {k: sum(a[k] == o.get("cell" if k == "position" else k) for a, o in pairs) / len(pairs) for k in ATTRIBUTES}
    return {"right": right, "shape_confusion": confusion_of([(a["shape"], o.get("shape")) for a, o in pairs])}


@torch.no_grad()
def word_sensitivity(pipe: Pipeline, asked: list[dict], images: list, seed: int) -> dict:
    """x̂0's squared error at object tokens, true caption against a swapped shape or colour word."""
    model, collator = pipe.model, pipe.collator
    variants = {
        "true": [prompt(a) for a in asked],
        "shape_swapped": [prompt(a, shape=SHAPES[(SHAPES.index(a["shape"]) + 1) % len(SHAPES)]) for a in asked],
        "color_swapped": [prompt(a, color=COLORS[(COLORS.index(a["color"]) + 1) % len(COLORS)]) for a in asked],
    }
    batches = {
        k: collator([Document([Text(p), Image(im)]) for p, im in zip(v, images, strict=True)])
        for k, v in variants.items()
    }
    ref = batches["true"]
    x0 = ref.patches[ref.layout.noisy].float()
    background = torch.tensor(BACKGROUND, dtype=torch.float32)[:, None] / 127.5 - 1.0
    px = x0.view(len(x0), model.cfg.channels, -1)  # a patch is (channels, rows, columns)
    on_object = (px - background).abs().amax((1, 2)) > 1e-3
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    out = {}
    for t in NOISE_LEVELS:
        xt = (1 - t) * x0 + t * eps
        row = {}
        for name, b in batches.items():
            patches = b.patches.clone()
            patches[b.layout.noisy] = xt.to(patches.dtype)
            tt = torch.full((b.block_label.numel(),), t)
            pred = model(b.tokens, patches, b.layout, t=tt, labels=b.block_label).pred.float()
            x0_hat = xt - t * pred  # the velocity eps - x0 turned back into x0
            row[name] = float(((x0_hat - x0) ** 2)[on_object].mean())
        row["x_t"] = float(((xt - x0) ** 2)[on_object].mean())  # the noisy input itself, for scale
        out[str(t)] = row
    return {"noise_levels": list(NOISE_LEVELS), "object_token_mse": out}


@torch.no_grad()
def teacher_forced(pipe: Pipeline, asked: list[dict], images: list, seed: int, steps: int, guidance: float) -> dict:
    """Each block sampled from noise with the true earlier blocks as its context (as in training),
    the sampled blocks assembled and judged: does a block, given the truth so far, draw the shape?
    Against the free run (every block reading the model's own earlier blocks) this separates a
    wrong conditional from errors that compound from block to block."""
    tok, n = pipe.tokenizer, len(asked)
    encoded = [pipe.collator.encode(Document([Image(im)]), close=False).segments for im in images]
    true = torch.stack([next(s.tokens for s in segs if isinstance(s, VisualSegment)) for segs in encoded])
    n_blocks = true.shape[1]
    prefixes = [[tok.bos_id, *tok.encode(prompt(a)), tok.boi_id] for a in asked]
    docs, picked = list(range(n)), []
    for k in range(n_blocks):
        eng = Engine(pipe.model, 2 * n, pipe._max_len(max(map(len, prefixes)), 1))
        eng.text(docs, prefixes)
        eng.text(eng.uncond_rows(docs), [[tok.bos_id, tok.null_id, tok.boi_id]] * n)
        both = docs + eng.uncond_rows(docs)
        eng.begin_image(both, pipe.cfg.grid)
        if k:
            eng.prefill_image(both, torch.cat([true[:, :k], true[:, :k]]))
        gens = _generators([seed + i for i in range(n)], n)
        out = eng.generate_image(
            docs, pipe._sampler(None, steps), gens, _guidance(guidance), "text", commit_last=False, first=k
        )
        picked.append(out[:, 0])
    drawn = [judge(im) for im in (np.asarray(x) for x in pipe._images(torch.stack(picked, 1)))]
    one = [(a, j) for a, j in zip(asked, drawn, strict=True) if j["count"] == 1]
    right = {k: sum(a[k] == j[k] for a, j in one) / max(len(one), 1) for k in ATTRIBUTES}
    return {
        "one_object": len(one) / n,
        "right_among_one_object": right,
        "shape_confusion": confusion_of([(a["shape"], j["shape"]) for a, j in one]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="an exported model folder or a training run directory")
    ap.add_argument("--cells", nargs="+", default=["top left", "bottom right"])
    ap.add_argument("--steps", type=int, default=20, help="sampler steps per block")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--sampler", default=None, help="default: the model's")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a sampler option")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--teacher-forced", action="store_true", help="also sample each block from the true earlier ones")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    options = apply_overrides({}, args.option, form="key=value")
    pipe = Pipeline.from_pretrained(args.model, sampler_options=options)
    asked = [
        {"color": c, "shape": s, "size": z, "position": cell}
        for c, s, z, cell in itertools.product(COLORS, SHAPES, SIZES, args.cells)
    ]
    prompts = [prompt(a) for a in asked]
    images = generate_images(pipe, prompts, args.seed, args.steps, args.guidance, args.sampler)
    judged = [judge(im) for im in images]
    one = [(a, j) for a, j in zip(asked, judged, strict=True) if j["count"] == 1]
    right = {k: sum(a[k] == j[k] for a, j in one) / max(len(one), 1) for k in ATTRIBUTES}
    right["all"] = sum(all(a[k] == j[k] for k in ATTRIBUTES) for a, j in one) / max(len(one), 1)
    shown = [render_scene([{**a, "cell": a["position"]}], pipe.cfg.image_size) for a in asked]
    result = {
        "benchmark": "shape_probe",
        "model": str(args.model),
        "sampler": pipe.sampler if args.sampler is None else args.sampler,
        "sampler_options": options,
        "steps": args.steps,
        "guidance": args.guidance,
        "seed": args.seed,
        "prompts": len(prompts),
        "one_object": len(one) / len(prompts),
        "right_among_one_object": right,
        "shape_confusion": confusion_of([(a["shape"], j["shape"]) for a, j in one]),
        "captioning": captioning(pipe, asked, shown),
    }
    if pipe.cfg.diffusion == "flow":
        result["word_sensitivity"] = word_sensitivity(pipe, asked, shown, args.seed)
    if args.teacher_forced:
        result["teacher_forced"] = teacher_forced(pipe, asked, shown, args.seed, args.steps, args.guidance)
    write_json(result, args.out, echo=True)


if __name__ == "__main__":
    main()
