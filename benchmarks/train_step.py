"""Training-step throughput and model FLOP utilisation (MFU) against this machine's measured peak.

    python benchmarks/train_step.py --preset tiny --batch 32 --dtype bf16   (default: auto)
    python benchmarks/train_step.py --dim 512 --depth 8 --heads 8 --batch 32 --profile

The batches are the real ones of a recipe (default `shapes-tiny`: 32x32 scenes with captions, the
main job's data, collated and packed as in training); the model is the recipe's model with the
preset and width/depth given here. One step = the diffusion + text losses forward under autocast
(or fp32), backward, the optimizer's step (`optim.kind`: AdamW, or Muon with AdamW), as
`unimodal.train` runs it without the DeepSpeed wrapper.

- `model_flops_per_step`: counted from the architecture on the step's own layout: every linear
  layer's 2 x in x out per token it sees (forward hooks), plus attention 4 x head_dim x heads per
  query-key pair the SCAM rule allows (the sparse count, not the dense L^2), times 3 for the
  backward. Element-wise work is not counted (the MFU convention).
- `peak_flops`: the best of several large square matrix products in the step's dtype, measured in
  this run with the same thread count (so `mfu` is relative to what this CPU does today).
- `layout_s`: building one batch: the documents made (for the built-in data, rendered), collated
  and packed (the data pipeline's share, done on the main thread in training), reported beside
  `step_s` as `layout_fraction`; `collate_s` / `collate_fraction`: the collation and packing
  alone (tokenising, patches, the packed layout), what the data's source does not decide.
- `optimizer_s`: the optimizer's step alone (gradient clipping, the update), inside `step_s`.
- `compiles`: torch.compile graphs compiled during the timed steps (0 unless `--compile`), and
  `compiles_per_step` beside `rows_per_step` (packed rows vary from batch to batch): a steady
  state compiles nothing.

One JSON object is printed (and written to `--out`).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import sync, write_json  # noqa: E402

from unimodal import UnifiedModel  # noqa: E402
from unimodal.attention.backends import Fields, dense_mask  # noqa: E402
from unimodal.data.pipeline import batch_stream  # noqa: E402
from unimodal.diffusion import Diffusion, losses  # noqa: E402
from unimodal.precision import PRECISIONS, autocast_dtype, resolve_precision  # noqa: E402
from unimodal.train.config import load_config  # noqa: E402
from unimodal.train.optim import build_optimizer  # noqa: E402
from unimodal.train.trainer import build_model_config, load_tokenizer  # noqa: E402


def matmul_peak(dtype: torch.dtype, device: torch.device, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n x n matrix product in `dtype` over `repeats` timed runs (n = 2048 on
    the CPU, 8192 on a GPU, large enough to saturate either)."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def model_flops(model: UnifiedModel, batch, diffusion: Diffusion, dtype: torch.dtype) -> tuple[float, float]:
    """(forward linear FLOPs, forward attention FLOPs) of one forward over `batch`, counted."""
    linear = 0.0

    def hook(mod: nn.Linear, inp, out) -> None:
        nonlocal linear
        linear += 2.0 * inp[0].numel() / inp[0].shape[-1] * mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Linear)]
    dev = batch.tokens.device.type
    with torch.no_grad(), torch.autocast(dev, dtype=dtype, enabled=dtype != torch.float32):
        losses(model, batch, diffusion)
    for h in handles:
        h.remove()
    f = Fields.of(batch.layout)
    pairs = float(dense_mask(f, f).sum())
    cfg = model.cfg
    attention = 4.0 * cfg.head_dim * cfg.heads * pairs * cfg.depth
    return linear, attention


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="shapes-tiny")
    ap.add_argument("--preset", default=None, help="model preset (default: the recipe's)")
    ap.add_argument("--dim", type=int)
    ap.add_argument("--depth", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--mlp", choices=["gelu", "gelu_tanh", "swiglu"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dtype", choices=PRECISIONS, default="auto", help="auto: bf16 where the hardware has it")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--profile", action="store_true", help="add the top operators of one step (self CPU time)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("overrides", nargs="*", help="dotted recipe overrides, e.g. data.collate.pack_rows=384")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    args.dtype = resolve_precision(args.dtype, device)
    dtype = autocast_dtype(args.dtype, device)

    overrides = [f"data.batch_size={args.batch}", *args.overrides]
    if args.preset:
        overrides.append(f"model.preset={args.preset}")
    for key in ("dim", "depth", "heads", "mlp"):
        if getattr(args, key) is not None:
            overrides.append(f"model.{key}={getattr(args, key)}")
    cfg = load_config(args.recipe, overrides)
    tokenizer = load_tokenizer(cfg.tokenizer, 0)
    mcfg = build_model_config(cfg, tokenizer)
    model = UnifiedModel(mcfg).to(device).train()
    diffusion = Diffusion(mcfg.diffusion)
    opt = build_optimizer(model, cfg.optim)
    stream = batch_stream(cfg.data, tokenizer, mcfg)
    collate, collate_times = stream.collator, []

    def timed_collate(*a, **kw):
        t0 = time.perf_counter()
        out = collate(*a, **kw)
        collate_times.append(time.perf_counter() - t0)
        return out

    stream.collator = timed_collate
    run = torch.compile(model) if args.compile else model

    optimizer_times = []

    def step(batch) -> float:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = losses(run, batch, diffusion)["loss"]
        loss.backward()
        sync(device)
        t0 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        optimizer_times.append(time.perf_counter() - t0)
        return loss.item()

    batches, layout_times = [], []
    for _ in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        batch = next(stream)
        layout_times.append(time.perf_counter() - t0)
        batches.append(batch.to(device))
    for b in batches[: args.warmup]:
        step(b)
    optimizer_times.clear()
    from torch._dynamo.utils import counters

    times, tokens, compiles_per_step = [], [], []
    for b in batches[args.warmup :]:
        before = counters["stats"]["unique_graphs"]
        sync(device)
        t0 = time.perf_counter()
        step(b)
        sync(device)
        times.append(time.perf_counter() - t0)
        compiles_per_step.append(counters["stats"]["unique_graphs"] - before)
        tokens.append(int((b.layout.doc >= 0).sum()))
    compiles = sum(compiles_per_step)

    lin, att = model_flops(model, batches[-1], diffusion, dtype)
    flops_per_step = 3 * (lin + att)
    step_s = statistics.median(times)
    peak = matmul_peak(dtype, device)
    result = {
        "benchmark": "train_step",
        "recipe": args.recipe,
        "overrides": args.overrides,
        "model": {k: getattr(mcfg, k) for k in ("dim", "depth", "heads", "mlp", "patch_size", "block_size")},
        "parameters": model.num_parameters(),
        "batch": args.batch,
        "rows": int(batches[-1].layout.doc.shape[0]),
        "row_length": int(batches[-1].layout.doc.shape[1]),
        "padding": 1 - sum(tokens) / sum(b.layout.doc.numel() for b in batches[args.warmup :]),
        "tokens_per_step": statistics.median(tokens),
        "dtype": args.dtype,
        "threads": args.threads,
        "compile": args.compile,
        "step_s": step_s,
        "step_s_all": times,
        "tokens_per_s": statistics.median(tokens) / step_s,
        "model_flops_per_step": flops_per_step,
        "linear_flops_share": lin / (lin + att),
        "achieved_flops": flops_per_step / step_s,
        "peak_flops": peak,
        "mfu": flops_per_step / step_s / peak,
        "layout_s": statistics.median(layout_times),
        "layout_fraction": statistics.median(layout_times) / step_s,
        "collate_s": statistics.median(collate_times),
        "collate_fraction": statistics.median(collate_times) / step_s,
        "optimizer": cfg.optim.kind,
        "optimizer_s": statistics.median(optimizer_times),
        "compiles": compiles,
        "compiles_per_step": compiles_per_step,
        "rows_per_step": [b.layout.shape[0] for b in batches[args.warmup :]],
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
        },
    }
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(batches[-1])
        rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:25]
        t = sum(e.self_cpu_time_total for e in prof.key_averages())
        result["profile_top"] = [
            {"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "calls": e.count, "share": e.self_cpu_time_total / t}
            for e in rows
        ]
    write_json(result, args.out, echo=True)


if __name__ == "__main__":
    main()
