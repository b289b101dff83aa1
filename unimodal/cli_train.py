"""`unimodal train`: the training command (the main job with no arguments)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .cli_generate import CommandError


def cmd_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    from .train.checkpoint import complete_checkpoints
    from .train.config import load_config, recipe_path
    from .train.trainer import NonFiniteLossError, run

    try:
        cfg = load_config(args.config, args.overrides)
    except (FileNotFoundError, KeyError, TypeError, ValueError) as e:
        raise CommandError(str(e.args[0] if e.args else e)) from e
    out = Path(args.out) if args.out else Path("runs") / recipe_path(args.config).stem
    if not args.resume and complete_checkpoints(out / "checkpoints"):
        raise CommandError(f"{out} already holds checkpoints: pass --resume auto to continue, or another --out")
    try:
        status = run(cfg, out, args.resume)
    except NonFiniteLossError as e:
        raise CommandError(str(e)) from e
    if status:
        raise SystemExit(status)
    return f"run directory: {out}" if int(os.environ.get("RANK", "0")) == 0 else ""  # said once, by rank 0


def add_commands(sub) -> None:
    sp = sub.add_parser(
        "train",
        help="train a model (no arguments: the main job, shapes-tiny on this machine)",
        description="Train with DeepSpeed from a YAML recipe (training/configs/), validated on load. "
        "Overrides are dotted keys, e.g. train.max_steps=200 optim.lr=1e-3. Leaves in the run directory: "
        "checkpoints/ (resumable), model/ (exported; Pipeline.from_pretrained loads the run directory), "
        "samples.png, captions.json, metrics.jsonl, loss.png, metrics.json and the resolved config.yaml.",
    )
    sp.add_argument("--config", metavar="YAML", help="recipe file or name in training/configs/ (default shapes-tiny)")
    sp.add_argument("--out", metavar="DIR", help="run directory (default runs/<recipe name>)")
    sp.add_argument(
        "--resume", metavar="auto|PATH", help="continue from the newest complete checkpoint (auto) or a checkpoint"
    )
    # the `deepspeed` launcher passes --local_rank to every process; the rank comes from the environment
    sp.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    sp.add_argument("overrides", nargs="*", metavar="section.key=value", help="recipe overrides")
    sp.set_defaults(func=cmd_train, parser=sp)
