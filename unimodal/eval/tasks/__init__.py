"""The evaluation tasks behind `unimodal eval`, in a registry.

    from unimodal.eval.tasks import TASKS, run_tasks
    pipe = Pipeline.from_pretrained("runs/shapes-tiny"); pipe.name_or_path = "runs/shapes-tiny"
    result = TASKS["shapes-t2i"].run(pipe, samples=64, seed=0, num_steps=20, guidance=2.0, sampler=None)
    report = run_tasks(pipe, ["shapes-t2i", "text-ppl"], samples=32)

Each `Task.run(pipe, samples, seed, num_steps, guidance, sampler)` returns `{"task", "metrics",
"record", "seconds"}`, or `{"task", "skipped", "record"}` when the model cannot take the task (a
text task for a model without a tokenizer, digits for an RGB model...). docs/evaluation.md
describes every task's protocol.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from typing import Any

from . import digits, likelihood, probe, shapes  # noqa: F401 - registers the tasks
from .base import TASKS, Skip, Task, task

TASK_NAMES: tuple[str, ...] = (
    "shapes-t2i",
    "shapes-caption",
    "shapes-scenes-t2i",
    "shapes-scenes-caption",
    "shapes-story",
    "shapes-video",
    "digits",
    "probe",
    "text-ppl",
    "val-loss",
)
assert set(TASK_NAMES) == set(TASKS), "every registered task has a place in TASK_NAMES"


def run_tasks(
    pipe,
    names: Sequence[str] | None = None,
    samples: int | None = None,
    seed: int = 0,
    num_steps: int | None = None,
    guidance: float | None = None,
    sampler: str | None = None,
    log=None,
) -> dict[str, Any]:
    """Run tasks (default: all) and collect `{"model", "tasks": {name: result}, "time"}`.

    A task that raises (a bug, not a misfit: misfits are skipped) is reported with `"error"` and
    its traceback instead of stopping the others."""
    names = list(TASK_NAMES) if names is None else list(names)
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise KeyError(f"unknown task(s) {unknown}; tasks are {list(TASK_NAMES)}")
    results: dict[str, Any] = {}
    for name in names:
        if log:
            log(f"{name} ...")
        try:
            results[name] = TASKS[name].run(pipe, samples, seed, num_steps, guidance, sampler)
        except Exception as e:  # one broken task must not lose the others' results
            results[name] = {
                "task": name,
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(),
            }
    path = getattr(pipe, "name_or_path", None)
    return {
        "model": None if path is None else str(path),
        "tasks": results,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


__all__ = ["TASKS", "TASK_NAMES", "Skip", "Task", "run_tasks", "task"]
