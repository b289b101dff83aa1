"""The task registry and what every task shares: records, skipping, model checks, batching.

A task is a function `body(pipe, samples, seed, num_steps, guidance, sampler) -> dict` registered
with `@task(name, samples=..., description=...)`. The registered `Task.run` has the same signature
and returns

    {"task": name, "metrics": {...}, "record": {...}, "seconds": s}       # ran
    {"task": name, "skipped": "reason", "record": {...}}                  # does not fit the model

The record holds the model (`pipe.name_or_path` when the caller set it), the sampler, steps,
guidance and seed actually used, the sample count, and whatever the body adds to `record` (split,
image size, dataset options, layers...). A body that finds the model unsuited raises `Skip`; that
never escapes `Task.run`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np


class Skip(Exception):  # a control-flow signal, named for what it does
    """Raised by a task body when the model cannot take the task; the message is the reason."""


@dataclass(frozen=True)
class Task:
    name: str
    body: Callable[..., dict]
    samples: int
    description: str
    generation: str  # what the task generates, so a reader knows whether sampler/steps/guidance mattered

    def run(
        self,
        pipe,
        samples: int | None = None,
        seed: int = 0,
        num_steps: int | None = None,
        guidance: float | None = None,
        sampler: str | None = None,
    ) -> dict[str, Any]:
        """Run the task on a Pipeline; `samples` None takes the task's default."""
        n = self.samples if samples is None else int(samples)
        if n < 1:
            raise ValueError(f"{self.name}: samples must be >= 1, got {n}")
        record = base_record(pipe, self.name, n, seed, num_steps, guidance, sampler)
        record["generation"] = self.generation
        t0 = time.perf_counter()
        try:
            out = self.body(pipe, n, seed, num_steps, guidance, sampler)
        except Skip as e:
            return {"task": self.name, "skipped": str(e), "record": record}
        record.update(out.pop("record", {}))
        return {
            "task": self.name,
            "metrics": out,
            "record": record,
            "seconds": round(time.perf_counter() - t0, 2),
        }


TASKS: dict[str, Task] = {}


SAMPLED = "images sampled with the recorded sampler, steps, guidance and seed"
GREEDY = "greedy captions (sampler, steps and guidance unused)"
NONE = "nothing generated (sampler, steps and guidance unused)"


def task(name: str, samples: int, description: str, generation: str = SAMPLED):
    """Register a task body under `name` with its default sample count."""

    def wrap(body: Callable[..., dict]) -> Callable[..., dict]:
        if name in TASKS:
            raise ValueError(f"task {name!r} registered twice")
        TASKS[name] = Task(name, body, samples, description, generation)
        return body

    return wrap


# ------------------------------------------------------------------------------------- records


def resolved_sampling(pipe, num_steps: int | None, guidance: float | None, sampler: str | None):
    """(sampler, steps, guidance) as the pipeline will use them: None takes the pipeline's default;
    guidance None (or 1) means none and is recorded as 1.0."""
    g = pipe.guidance if guidance is None else guidance
    if g is None:
        g = 1.0
    g = float(g) if isinstance(g, (int, float)) else repr(g)  # a schedule object: its repr
    return sampler or pipe.sampler, int(num_steps or pipe.num_steps), g


def base_record(pipe, name: str, samples: int, seed: int, num_steps, guidance, sampler) -> dict[str, Any]:
    smp, steps, g = resolved_sampling(pipe, num_steps, guidance, sampler)
    path = getattr(pipe, "name_or_path", None)
    return {
        "task": name,
        "model": None if path is None else str(path),
        "sampler": smp,
        "sampler_options": dict(getattr(pipe, "sampler_options", None) or {}),
        "candidates": int(getattr(pipe, "candidates", 1)),  # text->image draws per prompt, reranked
        "steps": steps,
        "guidance": g,
        "seed": int(seed),
        "samples": int(samples),
    }


# -------------------------------------------------------------------------------- model checks


def need_text(pipe, what: str) -> None:
    if pipe.tokenizer is None or not pipe.cfg.vocab_size:
        raise Skip(f"{what} needs text, and this model has no tokenizer")


def need_rgb(pipe, what: str, min_size: int = 16, frames: int | None = 1) -> None:
    """A model of RGB pixels (channels 3) of at least `min_size`; `frames` 1 = images, None = clips."""
    cfg = pipe.cfg
    need_pixels(pipe, what)
    if cfg.channels != 3:
        raise Skip(f"{what} needs an RGB model (3 channels); this one has {cfg.channels}")
    if cfg.image_size < min_size:
        raise Skip(f"{what} needs images of at least {min_size} pixels; this model makes {cfg.image_size}")
    if frames == 1 and cfg.frames != 1:
        raise Skip(f"{what} needs an image model; this one makes clips of {cfg.frames} frames")
    if frames is None and cfg.frames < 2:
        raise Skip(f"{what} needs a video model (frames >= 2); this one makes single images")


def need_pixels(pipe, what: str) -> None:
    """Latent models (a codec decodes their output) are not evaluated on pixel tasks yet: the
    held-out images would have to be encoded, and image sizes read through the codec."""
    codec = getattr(pipe, "codec", None)
    if codec is not None and type(codec).__name__ != "PixelCodec":
        raise Skip(f"{what} judges pixel models; this one generates {pipe.cfg.channels}-channel latents ({codec!r})")


def is_digits_model(cfg) -> bool:
    return cfg.channels == 1 and cfg.image_size == 8 and cfg.frames == 1


# ------------------------------------------------------------------------------ recipe options


def run_dir(pipe) -> Path | None:
    """The training run directory the model came from (a run dir, or its `model/` export), if any."""
    path = getattr(pipe, "name_or_path", None)
    if path is None:
        return None
    p = Path(path)
    for d in (p, p.parent):
        if (d / "config.yaml").is_file():
            return d
    return None


@cache
def _load_recipe(path: str):
    from ...train.config import load_config

    try:
        return load_config(path)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def recipe(pipe):
    """The run's validated TrainConfig (its config.yaml), or None."""
    d = run_dir(pipe)
    return None if d is None else _load_recipe(str(d / "config.yaml"))


SHAPES_WORLD_OPTIONS = ("colors", "shapes", "jitter", "disjoint")


def shapes_options(pipe) -> dict[str, Any]:
    """The `shapes` world options the model was trained with (colours, shapes, jitter, disjoint),
    read from the run's recipe when it trained on built-in shapes; {} (the defaults) otherwise."""
    r = recipe(pipe)
    if r is None or r.data.builtin != "shapes":
        return {}
    return {k: v for k, v in r.data.options.items() if k in SHAPES_WORLD_OPTIONS}


# ------------------------------------------------------------------------------------- helpers

BATCH = 32  # rows per generation call; seeds follow the global index, so results do not depend on it


def chunks(n: int, size: int = BATCH) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def to_array(image) -> np.ndarray:
    """A generated image (PIL or array) as a numpy array."""
    return np.asarray(image)


def one_blas_thread():
    """A context in which BLAS/OpenMP use one thread: scikit-learn's small fits here run ~40x
    slower with two OpenBLAS threads beside torch's on a 2-core CPU (thread contention)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def wilson_interval(hits: Sequence[bool], z: float = 1.96) -> list[float]:
    """The Wilson score interval [low, high] of a success rate (95% at z = 1.96): how far a rate
    measured on these samples may sit from the model's true rate. At 64 samples a rate of 0.1 spans
    about 0.05-0.20, so runs are compared at 256 (docs/evaluation.md)."""
    n = len(hits)
    if n == 0:
        return [0.0, 1.0]
    p = float(np.mean(hits))
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [round(float(max(0.0, centre - half)), 4), round(float(min(1.0, centre + half)), 4)]
