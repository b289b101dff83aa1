"""The block-size study: quality and sampling time from token-wise autoregression to whole-image
diffusion, at an equal training budget.

    python benchmarks/block_size.py --steps 300 --out benchmarks/results/block_size.json
    python benchmarks/block_size.py --report benchmarks/results/block_size.json --plot study.png

The main job's recipe (`shapes-tiny`: 32x32 scenes in patches of 8, a 4x4 patch grid) is trained
once per block size with everything else equal, the same number of steps on the same batches (the
tokens per step do not depend on the block size: every patch has one clean and, when trained, one
noisy copy), then evaluated with `unimodal eval` on the same held-out prompts and images. Block
sizes are tiles of b x b patches: 1 (16 blocks of one patch, the recipe's default: patch-wise
autoregression), 2 (4 blocks) and 4 (one block: whole-image diffusion, DiT-like). The number of
blocks per image is read from the recipe and overrides (the model's patch grid and block kind).

Sampling time is the wall time of `Pipeline.text_to_image` for `--prompts` prompts in one batch
with the evaluation's steps and guidance, median of three, after a warm-up. Results: one JSON
object (training time, losses, evaluation metrics and sampling time per block size), a Markdown
table on stdout, and with `--plot` a PNG of quality and sampling time against the block size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import write_json  # noqa: E402

TASKS = ["shapes-scenes-t2i", "shapes-scenes-caption", "val-loss"]


def blocks_per_image(block: int, recipe: str, overrides: list[str]) -> int:
    """How many blocks one image (or clip) of `recipe` has at `model.block_size=block`."""
    from unimodal.train.config import load_config
    from unimodal.train.trainer import build_model_config

    try:  # the config refuses, on load, blocks that do not tile the grid
        model = build_model_config(load_config(recipe, [*overrides, f"model.block_size={block}"]), None)
    except ValueError as e:
        raise SystemExit(f"--blocks {block}: {e}") from e
    return model.block_spec.num_blocks(model.grid)


def train(recipe: str, block: int, steps: int, out: Path, extra: list[str]) -> float:
    """Train `recipe` at tiles of `block` patches into `out`; returns the wall time."""
    cmd = ["unimodal", "train", "--config", recipe, "--out", str(out), f"model.block_size={block}"]
    cmd += [f"train.max_steps={steps}"]
    cmd += [f"train.checkpoint_every={steps}", "sample.prompts=[]", "sample.captions=0", "eval.tasks=[]", *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def sampling_time(model_dir: Path, prompts: int, steps: int, guidance: float) -> float:
    import torch

    from unimodal.data import load_builtin
    from unimodal.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(model_dir, num_steps=steps)
    docs = load_builtin("shapes", task="scenes", split="test", n=prompts)
    texts = [d.segments[0].text for d in docs]
    with torch.no_grad():
        pipe.text_to_image(texts, guidance=guidance, seed=0)  # warm-up
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            pipe.text_to_image(texts, guidance=guidance, seed=0)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="shapes-tiny")
    ap.add_argument("--blocks", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--eval-steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=1.5, help="the recipe's evaluation guidance")
    ap.add_argument("--prompts", type=int, default=16, help="batch of the sampling-time measurement")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "block_size")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--report", type=Path, help="print and plot an earlier study's JSON; trains nothing")
    ap.add_argument("overrides", nargs="*", help="recipe overrides applied to every run")
    args = ap.parse_args()
    if args.report:
        report(json.loads(args.report.read_text()), args.plot)
        return
    tiles = {b: blocks_per_image(b, args.recipe, args.overrides) for b in args.blocks}  # refuse before training
    rows = []
    for b in args.blocks:
        run_dir = args.runs / f"block{b}"
        train_s = train(args.recipe, b, args.steps, run_dir, args.overrides)
        eval_json = run_dir / "eval.json"
        cmd = ["unimodal", "eval", str(run_dir), "--out", str(eval_json), "--samples", str(args.samples)]
        cmd += ["--steps", str(args.eval_steps), "--guidance", str(args.guidance)]
        for t in TASKS:
            cmd += ["--task", t]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        tasks = json.loads(eval_json.read_text())["tasks"]
        m = {t: tasks[t]["metrics"] for t in TASKS}
        log = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        last = [r for r in log if "image" in r][-20:]
        rows.append(
            {
                "block": b,
                "blocks_per_image": tiles[b],
                "train_s": train_s,
                "train_image_loss_last20": statistics.mean(r["image"] for r in last),
                "train_text_loss_last20": statistics.mean(r["text"] for r in last),
                "val_image_loss": m["val-loss"]["image_loss"],
                "val_text_loss": m["val-loss"]["text_loss"],
                "t2i_correct": m["shapes-scenes-t2i"]["correct"],
                "t2i_precision": m["shapes-scenes-t2i"]["precision"],
                "t2i_recall": m["shapes-scenes-t2i"]["recall"],
                "t2i_count_accuracy": m["shapes-scenes-t2i"]["count_accuracy"],
                "caption_exact": m["shapes-scenes-caption"]["exact"],
                "sampling_s": sampling_time(run_dir, args.prompts, args.eval_steps, args.guidance),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr)
        result = {
            "benchmark": "block_size",
            "recipe": args.recipe,
            "steps": args.steps,
            "samples": args.samples,
            "eval_steps": args.eval_steps,
            "guidance": args.guidance,
            "sampling_prompts": args.prompts,
            "overrides": args.overrides,
            "results": rows,
        }
        write_json(result, args.out)  # rewritten after every block size: a long study keeps what it has
    report(result, args.plot)


def report(result: dict, plot: Path | None) -> None:
    """Print the study's Markdown table and, with `plot`, draw quality and sampling time per block size."""
    rows = result["results"]
    keys = ["block", "blocks_per_image", "val_image_loss", "t2i_recall", "t2i_precision", "t2i_count_accuracy"]
    keys += ["t2i_correct", "caption_exact", "sampling_s", "train_s"]
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    if plot is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["blocks_per_image"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    for k in ("t2i_correct", "t2i_recall", "t2i_precision", "t2i_count_accuracy", "caption_exact"):
        ax[0].plot(x, [r[k] for r in rows], marker="o", label=k)
    ax[0].set(xscale="log", xlabel="blocks per image", title=f"quality after {result['steps']} steps")
    ax[0].legend(fontsize=7)
    ax[1].plot(x, [r["sampling_s"] for r in rows], marker="o")
    ax[1].set(xscale="log", xlabel="blocks per image", ylabel="s")
    ax[1].set(title=f"sampling {result['sampling_prompts']} images")
    fig.tight_layout()
    fig.savefig(plot, dpi=100)


if __name__ == "__main__":
    main()
