"""Checkpoints: DeepSpeed's sharded state plus everything else a run needs to continue exactly.

    run/checkpoints/
        step-000200/           complete checkpoints (a COMPLETE marker is written last)
            ds/state/          DeepSpeed: model, optimizer and LR-scheduler shards
            extra-rank0.pt     step, EMA shard, data position, RNG states, counters (tensors only)
            tokenizer/
            COMPLETE
        latest                 the name of the newest complete checkpoint

A checkpoint is written into `.tmp-step-N` and renamed when every rank has finished, then
`latest` is replaced atomically, so a crash mid-write leaves the previous checkpoint intact and
`--resume auto` uses it. The last `keep` checkpoints are kept.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

COMPLETE = "COMPLETE"
LATEST = "latest"
DS_TAG = "state"


def _name(step: int) -> str:
    return f"step-{step:06d}"


def rng_state() -> dict[str, Any]:
    """Every RNG the process uses, as tensors and ints (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate((state["python_version"], tuple(state["python"]), None))


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / COMPLETE).is_file())


def find_resume(root: Path, resume: str) -> Path | None:
    """`auto`: the newest complete checkpoint (via `latest`, else by scanning), or None; a path:
    that checkpoint, which must be complete."""
    if resume != "auto":
        p = Path(resume)
        if not (p / COMPLETE).is_file():
            raise FileNotFoundError(f"{p}: not a complete checkpoint (no {COMPLETE} marker)")
        return p
    latest = root / LATEST
    if latest.is_file():
        p = root / latest.read_text().strip()
        if (p / COMPLETE).is_file():
            return p
    found = complete_checkpoints(root)
    return found[-1] if found else None


def save(engine, root: Path, step: int, extra: dict[str, Any], tokenizer, keep: int) -> Path:
    """Write a checkpoint collectively (every rank calls it); returns its final path."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    tmp = root / f".tmp-{_name(step)}"
    final = root / _name(step)
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    engine.save_checkpoint(str(tmp / "ds"), tag=DS_TAG)
    torch.save(extra, tmp / f"extra-rank{rank}.pt")
    _barrier()
    if rank == 0:
        if tokenizer is not None:
            tokenizer.save(tmp / "tokenizer")
        (tmp / COMPLETE).write_text(f"{step}\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = root / f".{LATEST}.tmp"
        pointer.write_text(final.name + "\n")
        os.replace(pointer, root / LATEST)
        for old in complete_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load(engine, path: Path) -> dict[str, Any]:
    """Restore DeepSpeed's state from checkpoint `path`; returns this rank's extras."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    load_path, _ = engine.load_checkpoint(str(path / "ds"), tag=DS_TAG)
    if load_path is None:
        raise RuntimeError(f"{path}: DeepSpeed could not load its state")
    f = path / f"extra-rank{rank}.pt"
    if not f.is_file():
        raise FileNotFoundError(f"{f}: missing (was the checkpoint written with another world size?)")
    return torch.load(f, map_location="cpu", weights_only=True)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
