"""What every benchmark script shares: writing its JSON result, waiting for the device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def write_json(result: dict[str, Any], out: Path | None, echo: bool = False) -> None:
    """Write `result` to `out` (if given; parents created), and print it too with `echo`."""
    text = json.dumps(result, indent=2)
    if echo:
        print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timer read after it is right (CUDA runs
    asynchronously; a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
