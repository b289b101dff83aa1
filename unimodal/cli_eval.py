"""`unimodal eval`: run evaluation tasks on a trained model, print a table, write the JSON.

    unimodal eval MODEL [--task NAME ...] [--out FILE.json] [--samples N] [--steps S]
                        [--guidance G] [--sampler NAME] [--sampler-option KEY=VALUE ...]
                        [--candidates N] [--seed K] [--allow-pickle]

MODEL is an exported model folder or a training run directory. Without --task every task runs;
those the model cannot take are listed as skipped with the reason. The JSON (default
MODEL/eval.json) holds, per task, its metrics and the record of how they were made (model,
sampler, steps, guidance, seed, sample count, data). Tasks: see unimodal.eval.tasks and
docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from .cli_generate import CommandError, _nonneg, _positive, load_pipeline
from .configtools import apply_overrides
from .eval.tasks import TASK_NAMES, TASKS
from .eval.tasks.base import SAMPLED
from .samplers import SAMPLERS


def _rows(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """(metric, value text): a group of numbers (e.g. per attribute) on one line, deeper groups
    with dotted names; lists (examples) only in the JSON."""
    rows = []
    for k, v in metrics.items():
        if isinstance(v, dict) and all(not isinstance(x, (dict, list, tuple)) for x in v.values()):
            rows.append((prefix + k, "  ".join(f"{a} {_value(x)}" for a, x in v.items())))
        elif isinstance(v, dict):
            rows += _rows(v, f"{prefix}{k}.")
        elif not isinstance(v, (list, tuple)):
            rows.append((prefix + k, _value(v)))
    return rows


def _value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def format_table(report: dict[str, Any]) -> str:
    """One block per task: its metrics (nested keys dotted), then how they were made."""
    width = max([len(n) for n in report["tasks"]] + [4]) + 2
    rows = {n: _rows(r["metrics"]) for n, r in report["tasks"].items() if "metrics" in r}
    mw = max([len(k) for rs in rows.values() for k, _ in rs] + [6]) + 2
    lines = [f"{'task':<{width}}{'metric':<{mw}}value", "-" * (width + mw + 50)]
    for name, res in report["tasks"].items():
        if "skipped" in res:
            lines.append(f"{name:<{width}}skipped: {res['skipped']}")
            continue
        if "error" in res:
            lines.append(f"{name:<{width}}ERROR: {res['error']}")
            continue
        for i, (k, v) in enumerate(rows[name]):
            lines.append(f"{name if i == 0 else '':<{width}}{k:<{mw}}{v}")
        r = res["record"]
        if r.get("generation") == SAMPLED:
            opts = "".join(f" {k}={v}" for k, v in r.get("sampler_options", {}).items())
            how = f"sampler {r['sampler']}{opts}, {r['steps']} steps, guidance {r['guidance']}, seed {r['seed']}"
            if r.get("candidates", 1) > 1:
                how += f", best of {r['candidates']} by caption likelihood"
        else:
            how = f"seed {r['seed']}, {r.get('generation', '').split(' (')[0]}"
        lines.append(f"{'':<{width}}({r['samples']} samples, {how}; {res['seconds']} s)")
    lines.append(f"model: {report['model']}")
    return "\n".join(lines)


def _json_safe(x: Any) -> Any:
    """NaN/inf become null (strict JSON); tuples become lists."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if hasattr(x, "item") and getattr(x, "ndim", None) == 0:  # numpy / torch scalars
        return _json_safe(x.item())
    return x


def cmd_eval(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    from . import __version__
    from .eval.tasks import run_tasks
    from .samplers import make_sampler

    pipe = load_pipeline(args.model, args.allow_pickle)
    pipe.name_or_path = args.model
    try:  # KEY=VALUE, values read as YAML
        pipe.sampler_options = apply_overrides({}, args.sampler_option, form="key=value")
    except ValueError as e:
        raise CommandError(f"--sampler-option: {e}") from None
    pipe.candidates = args.candidates
    try:
        smp, steps = args.sampler or pipe.sampler, args.steps or pipe.num_steps
        make_sampler(smp, steps, pipe.cfg.diffusion, **pipe.sampler_options)
    except ValueError as e:
        raise CommandError(str(e)) from None
    names = list(dict.fromkeys(args.task or TASK_NAMES))

    def log(msg: str) -> None:
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()

    report = run_tasks(
        pipe,
        names,
        samples=args.samples,
        seed=args.seed,
        num_steps=args.steps,
        guidance=args.guidance,
        sampler=args.sampler,
        log=log,
    )
    report["settings"] = {
        "tasks": names,
        "samples": args.samples,
        "seed": args.seed,
        "steps": args.steps,
        "guidance": args.guidance,
        "sampler": args.sampler,
        "sampler_options": pipe.sampler_options,
        "candidates": args.candidates,
    }
    report["unimodal_version"] = __version__
    out = Path(args.out) if args.out else Path(args.model) / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_json_safe(report), indent=2) + "\n")
    table = format_table(report) + f"\nwritten: {out}"
    failed = [n for n, r in report["tasks"].items() if "error" in r]
    if failed:
        sys.stdout.write(table + "\n")
        for n in failed:
            sys.stderr.write(report["tasks"][n]["traceback"])
        raise CommandError(f"task(s) {', '.join(failed)} failed (tracebacks above; results in {out})")
    return table


def add_commands(sub) -> None:
    """Register `eval` on the `unimodal` subparsers."""
    tasks_help = "\n".join(f"  {n:<22}{TASKS[n].description} ({TASKS[n].samples} samples)" for n in TASK_NAMES)
    sp = sub.add_parser(
        "eval",
        help="evaluate a model on built-in tasks; prints a table and writes JSON",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run evaluation tasks on MODEL (an exported model folder or a training run directory).\n"
        "Tasks the model cannot take are reported as skipped with the reason. Every result records the\n"
        "model, sampler, steps, guidance, seed and sample count. Protocols: docs/evaluation.md.\n\n"
        "tasks (default samples):\n" + tasks_help,
    )
    sp.add_argument("model", metavar="MODEL", help="an exported model folder or a training run directory")
    sp.add_argument(
        "--task",
        action="extend",
        nargs="+",
        choices=TASK_NAMES,
        metavar="NAME",
        help=f"tasks to run (--task A B, or --task A --task B; default all): {', '.join(TASK_NAMES)}",
    )
    sp.add_argument("--out", metavar="FILE.json", help="where to write the results (default MODEL/eval.json)")
    sp.add_argument(
        "--samples", type=_positive, metavar="N", help="samples per task (default: each task's own, 32 to 256)"
    )
    sp.add_argument("--steps", type=_positive, metavar="S", help="denoising steps per block (default the pipeline's)")
    sp.add_argument("--guidance", type=float, metavar="G", help="classifier-free guidance scale (default none)")
    sp.add_argument(
        "--sampler",
        choices=sorted(SAMPLERS),
        metavar="NAME",
        help=f"one of {', '.join(sorted(SAMPLERS))} (default the model's: dpmpp_2m for ddpm_eps, euler for flow)",
    )
    sp.add_argument(
        "--sampler-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a sampler option, e.g. shift=3 for euler/heun (repeatable; values read as YAML)",
    )
    sp.add_argument(
        "--candidates",
        type=_positive,
        default=1,
        metavar="N",
        help="text->image: draw N images per prompt and keep the one the model captions likeliest as the prompt "
        "(default 1: no reranking)",
    )
    sp.add_argument(
        "--seed", type=_nonneg, default=0, metavar="K", help="sampling seed: row i of a task uses K+i (default 0)"
    )
    sp.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load a pickle checkpoint when there is no model.safetensors (torch.load(weights_only=True))",
    )
    sp.set_defaults(func=cmd_eval, parser=sp)
