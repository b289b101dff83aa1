"""Which attribute a shapes model gets wrong when it draws one object: the shape confusion matrix.

    python benchmarks/shape_probe.py runs/main --out benchmarks/results/main_job/shape_probe.json

Prompts every combination of colour, shape and size at two cells ("a small red circle at the top
left", ...: 6 x 3 x 2 x 2 = 72 prompts), draws each once (seed i for prompt i) with the model's
sampler, and reads the images back with the shapes judge. Over the images that show exactly one
object it reports the share with the prompt's colour, shape, size and cell, and all four; and the
confusion matrix of shapes (rows: asked, columns: drawn). The scenes evaluation
(`shapes-scenes-t2i`, `by_attribute`) says how often an attribute fails among several objects;
this isolates the attribute from counting and placement, one object on an empty canvas.
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

from unimodal.data.shapes.world import COLORS, SHAPES, SIZES  # noqa: E402
from unimodal.eval.shapes import judge  # noqa: E402
from unimodal.eval.tasks.shapes import generate_images  # noqa: E402
from unimodal.pipeline import Pipeline  # noqa: E402

ATTRIBUTES = ("color", "shape", "size", "position")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="an exported model folder or a training run directory")
    ap.add_argument("--cells", nargs="+", default=["top left", "bottom right"])
    ap.add_argument("--steps", type=int, default=20, help="sampler steps per block")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--sampler", default=None, help="default: the model's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    pipe = Pipeline.from_pretrained(args.model)
    asked = [
        {"color": c, "shape": s, "size": z, "position": cell}
        for c, s, z, cell in itertools.product(COLORS, SHAPES, SIZES, args.cells)
    ]
    prompts = [f"a {a['size']} {a['color']} {a['shape']} at the {a['position']}" for a in asked]
    images = generate_images(pipe, prompts, args.seed, args.steps, args.guidance, args.sampler)
    judged = [judge(im) for im in images]
    one = [(a, j) for a, j in zip(asked, judged, strict=True) if j["count"] == 1]
    right = {k: sum(a[k] == j[k] for a, j in one) / max(len(one), 1) for k in ATTRIBUTES}
    right["all"] = sum(all(a[k] == j[k] for k in ATTRIBUTES) for a, j in one) / max(len(one), 1)
    confusion = {s: dict.fromkeys(SHAPES, 0) for s in SHAPES}
    for a, j in one:
        confusion[a["shape"]][j["shape"]] += 1
    result = {
        "benchmark": "shape_probe",
        "model": str(args.model),
        "sampler": pipe.sampler if args.sampler is None else args.sampler,
        "steps": args.steps,
        "guidance": args.guidance,
        "seed": args.seed,
        "prompts": len(prompts),
        "one_object": len(one) / len(prompts),
        "right_among_one_object": right,
        "shape_confusion": confusion,
    }
    write_json(result, args.out, echo=True)


if __name__ == "__main__":
    main()
