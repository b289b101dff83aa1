"""What a finished run leaves besides the model: a sample grid, held-out captions, a loss plot
and the final evaluation (`metrics.json`), all made from the exported model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from ..documents import Image, Text


def image_grid(images: list, cols: int) -> PILImage.Image:
    """Tile equally sized PIL images row by row."""
    w, h = images[0].size
    rows = -(-len(images) // cols)
    grid = PILImage.new(images[0].mode, (cols * w, rows * h))
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid


def loss_plot(metrics_jsonl: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_jsonl.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in rows]
    for key in ("loss", "text", "image"):
        ax.plot(steps, [r[key] for r in rows], label=key, linewidth=1)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def finalize(trainer) -> None:
    """Samples, captions, plot and metrics.json for a finished run (rank 0)."""
    from ..data.pipeline import build_documents
    from ..eval.tasks import run_tasks
    from ..pipeline import Pipeline
    from .trainer import eval_config

    cfg, out = trainer.cfg, trainer.out
    t0 = time.time()
    pipe = Pipeline.from_pretrained(out, num_steps=cfg.sample.num_steps, sampler=cfg.sample.sampler)
    s = cfg.sample
    grid_images, cols = [], s.per_prompt
    if s.per_prompt and s.prompts and pipe.tokenizer is not None:
        for i, p in enumerate(s.prompts):
            grid_images += pipe.text_to_image([p] * s.per_prompt, guidance=s.guidance, seed=1000 * i)
    elif s.per_prompt and s.classes:
        for i, y in enumerate(s.classes):
            grid_images += pipe.class_to_image([y] * s.per_prompt, guidance=s.guidance, seed=1000 * i)
    if grid_images:  # a clip becomes one row of its frames
        grid_images = [image_grid(im, len(im)) if isinstance(im, list) else im for im in grid_images]
        image_grid([im.convert("RGB") for im in grid_images], cols).resize(
            (cols * 4 * grid_images[0].size[0], -(-len(grid_images) // cols) * 4 * grid_images[0].size[1]),
            PILImage.NEAREST,
        ).save(out / "samples.png")
    if s.captions and pipe.tokenizer is not None:
        held = build_documents(eval_config(cfg))
        docs = [held[i] for i in range(min(s.captions, len(held)))]
        images = [next(seg for seg in d.segments if isinstance(seg, Image)) for d in docs]
        refs = [" ".join(seg.text for seg in d.segments if isinstance(seg, Text)) for d in docs]
        got = pipe.caption(images, max_new_tokens=48)
        (out / "captions.json").write_text(
            json.dumps([{"reference": r, "caption": c} for r, c in zip(refs, got, strict=True)], indent=2) + "\n"
        )
    if (out / "metrics.jsonl").is_file():
        loss_plot(out / "metrics.jsonl", out / "loss.png")
    pipe.name_or_path = str(out)
    metrics = {
        "steps": trainer.step,
        "nonfinite_skipped": trainer.nonfinite,
        "bad_records_skipped": trainer.stream.skipped(),
    }
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    if rows:
        metrics["tokens_per_s_mean"] = float(np.mean([r["tokens_per_s"] for r in rows[len(rows) // 10 :]]))
    metrics["eval"] = run_tasks(
        pipe,
        cfg.eval.tasks,
        samples=cfg.eval.samples,
        num_steps=cfg.eval.num_steps,
        guidance=cfg.eval.guidance,
        sampler=cfg.sample.sampler,
    )
    metrics["finalize_s"] = round(time.time() - t0, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
