"""Attention backends on the SCAM mask: time and peak memory from 256 to 8192 tokens.

    python benchmarks/attention.py --out benchmarks/results/attention_cpu.json
    python benchmarks/attention.py --lengths 1024 8192 --backends dense flex --mode forward

Each length L is one row of L tokens packed with real layouts (`unimodal.layout.pack`): documents
of a 12-token caption and a 32x32-patch image cut into 64 blocks of 16 patches, with their noisy
copies (2 x 1024 + 14 tokens each), as many as fit, the rest padding. Queries, keys and values
are (1, heads, L, head_dim) in bf16 where the hardware has it (`--dtype auto`, the default), else
float32 (`--dtype bf16|fp32` forces one). Per backend:

- `time_s`: median over `--repeats` of one call (forward) or forward + backward of the sum, after
  a warm-up call that also compiles (FlexAttention) or builds the bias (xformers);
- `mask_s`: building the backend's mask from the layout (dense boolean mask, FlexAttention block
  mask, xformers bias), the per-batch cost a training step pays once for all layers;
- `peak_bytes`: on CUDA `torch.cuda.max_memory_allocated` above the inputs; on CPU the peak
  resident set during the timed calls above the resident set before them (Linux: the peak,
  VmHWM, is reset through /proc/self/clear_refs after the warm-up, so compilation does not count),
  each configuration in its own subprocess.

FlexAttention has no backward on CPU in this torch, so on CPU `--mode train` measures it forward
only (marked `"backward": false`). xformers needs CUDA and is skipped without it. One JSON object is
printed (and written to `--out`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import sync, write_json  # noqa: E402

from unimodal.attention.backends import AttentionPlan, Fields, xformers_problem  # noqa: E402
from unimodal.layout import EncodedDoc, VisualSegment, pack  # noqa: E402
from unimodal.precision import PRECISIONS, autocast_dtype, resolve_precision  # noqa: E402

GRID, BLOCK, CAPTION = 32, 16, 12


def scam_layout(length: int):
    """One row of `length` tokens: as many caption + image documents as fit, then padding."""

    def doc(n_blocks: int, grid: tuple[int, int, int]) -> EncodedDoc:
        pos = torch.zeros(n_blocks, BLOCK, 3, dtype=torch.long)  # positions do not enter the mask
        return EncodedDoc([list(range(CAPTION + 1)), VisualSegment(torch.zeros(n_blocks, BLOCK, 1), pos, grid), [0]])

    doc_len = CAPTION + 2 + 2 * GRID * GRID
    if length < doc_len:  # short rows: one document with a smaller image
        k = max(1, (length - CAPTION - 2) // (2 * BLOCK))
        return pack([doc(k, (1, 4, 4 * k))], 1, row_len=length).layout
    docs = [doc(GRID * GRID // BLOCK, (1, GRID, GRID)) for _ in range(length // doc_len)]
    return pack(docs, 1, row_len=length).layout


def _status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(args) -> dict:
    """One configuration (backend, length) in this process."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = autocast_dtype(args.dtype, device)
    lay = scam_layout(args.length).to(device)
    f = Fields.of(lay)
    backward = args.mode == "train" and not (args.backend == "flex" and device.type == "cpu")

    t0 = time.perf_counter()
    plan = AttentionPlan(f, f, args.backend)
    sync(device)
    mask_s = time.perf_counter() - t0
    shape = (1, args.heads, args.length, args.head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=backward) for _ in range(3))

    def call():
        if backward:
            plan(q, k, v).float().sum().backward()
        else:
            with torch.no_grad():
                plan(q, k, v)
        sync(device)

    call()  # warm-up (compiles FlexAttention, builds the xformers bias)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set (VmHWM)
        base = _status_bytes("VmRSS")
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _status_bytes("VmHWM") - base
    allowed = float(plan.mask.sum()) if args.backend == "dense" else None
    return {
        "backend": args.backend,
        "length": args.length,
        "backward": backward,
        "time_s": statistics.median(times),
        "mask_s": mask_s,
        "peak_bytes": peak,
        "density": None if allowed is None else allowed / args.length**2,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192])
    ap.add_argument("--backends", nargs="+", default=["dense", "flex", "xformers"])
    ap.add_argument("--mode", choices=["train", "forward"], default="train")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--dtype", choices=PRECISIONS, default="auto", help="auto: bf16 where the hardware has it")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--length", type=int, help=argparse.SUPPRESS)  # one configuration (subprocess)
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.dtype = resolve_precision(args.dtype, args.device)
    if args.length is not None:
        print(json.dumps(measure(args)))
        return
    rows = []
    for backend in args.backends:
        if backend == "xformers" and (problem := xformers_problem()) is not None:
            rows.append({"backend": backend, "skipped": problem})
            continue
        for length in args.lengths:
            cmd = [sys.executable, __file__, "--length", str(length), "--backend", backend]
            for key in ("mode", "heads", "head_dim", "dtype", "device", "repeats", "threads"):
                cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                rows.append({"backend": backend, "length": length, "error": proc.stderr.strip().splitlines()[-1]})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr)
    result = {
        "benchmark": "attention",
        "mode": args.mode,
        "heads": args.heads,
        "head_dim": args.head_dim,
        "dtype": args.dtype,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        "threads": args.threads,
        "torch": torch.__version__,
        "results": rows,
    }
    write_json(result, args.out, echo=True)


if __name__ == "__main__":
    main()
