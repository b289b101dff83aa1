"""Cached vs uncached blockwise sampling: measured time per image beside the theoretical speed-up.

    python benchmarks/sampling.py --threads 1 --profile --out benchmarks/results/sampling_1thread.json

One random-weight model (preset "tiny", vocabulary of the shipped `tokenizers_cfg/shapes`
tokenizer, 16x16 images with patch 2: an 8x8 patch grid) is timed through
`Pipeline.text_to_image` with `use_cache=True` and `use_cache=False`, at 4 blocks per image
(tiles of 4x4 patches) and 16 blocks per image (tiles of 2x2), with the same weights, prompts,
sampler and number of steps, in fp32 and under bf16 autocast. The block size only changes how the
grid is cut, so both block counts share one set of weights. Results are in docs/generation.md.

Theoretical speed-up = tokens the uncached path runs through the trunk / tokens the cached path
runs, counted from the Engine loop (no guidance; P prompt tokens, N blocks of B tokens, S model
calls per block):

- cached: the prompt once (P), then per block S calls over the B noisy tokens, plus the previous
  clean block once, fused with the first call of the next block ((N - 1) B; the pipeline does not
  commit the last block): P + N S B + (N - 1) B.
- uncached: the prompt once, then at every call of block k the whole prefix again: the prompt, the
  clean blocks 0..k-1 and the noisy block k: P + S sum_k (P + (k + 1) B) = P + N S P + S B N (N + 1) / 2.

The counts are checked against an instrumented run (hooks on the model's forward counting the real
tokens of every layout and timing every forward). A FLOP-based ratio (linear layers 2 x 12 dim^2
per token and layer, attention 4 dim per query-key pair, as computed: the dense mask is evaluated
in full) is reported beside it, and a latency model t = a + b * tokens fitted over all forwards.

Times are medians of `--repeats` calls after `--warmup`, the variants alternating within each
repeat; both wall-clock and CPU time (`time.process_time`, robust to other jobs on a shared
machine when running one thread) are recorded. `--profile` adds the exclusive CPU time per section
of the code (engine, cache, mask, linears by module, norms, ...), the aten operations per forward,
and the cost of one small forward at the model's width and at dim 32.

Output: one JSON object on stdout (and in `--out`, rewritten after every configuration).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import sync, write_json  # noqa: E402

from unimodal import ModelConfig, UnifiedModel  # noqa: E402
from unimodal.pipeline import Pipeline  # noqa: E402
from unimodal.samplers import make_sampler  # noqa: E402
from unimodal.tokenizer import Tokenizer  # noqa: E402

PROMPTS = [
    "a small red circle at the top left",
    "two large blue squares",
    "a green triangle in the middle",
    "a yellow square at the bottom right",
]


def source_version() -> dict:
    """The commit and whether the library differs from it (results depend on the working tree)."""
    import subprocess

    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    changed = git("status", "--porcelain", "unimodal")
    return {
        "commit": git("rev-parse", "HEAD"),
        "unimodal_modified_files": None if changed is None else len(changed.splitlines()),
    }


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def random_model(preset: str, vocab: int, image_size: int, patch: int, seed: int = 0) -> UnifiedModel:
    """Random weights everywhere (the zero-initialised AdaLN would make noisy tokens trivial)."""
    cfg = ModelConfig.from_preset(preset, vocab_size=vocab, image_size=image_size, patch_size=patch)
    model = UnifiedModel(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def with_block_size(model: UnifiedModel, block_size: int) -> UnifiedModel:
    """The same weights, the grid cut into tiles of `block_size` x `block_size` patches."""
    cfg = ModelConfig.from_dict({**model.cfg.to_dict(), "block_size": block_size})
    other = UnifiedModel(cfg)
    other.load_state_dict(model.state_dict())
    return other.eval()


def theory(prompt: int, blocks: int, block_len: int, calls: int, dim: int, depth: int) -> dict:
    """Exact token counts of both paths for one image (no guidance; `calls` model calls per block),
    and a FLOP estimate."""
    P, N, B, S = prompt, blocks, block_len, calls
    cached = P + N * S * B + (N - 1) * B
    uncached = P + N * S * P + S * B * N * (N + 1) // 2
    lin = 2 * 12 * dim * dim  # FLOPs per token and layer in the linear layers (qkv 3, proj 1, mlp 8 dim^2)

    def flops(n_q: int, n_k: int) -> int:
        return depth * (lin * n_q + 4 * dim * n_q * n_k)

    f_cached = flops(P, P)
    f_uncached = flops(P, P)
    for k in range(N):
        for i in range(S):
            fused = B if (i == 0 and k > 0) else 0
            f_cached += flops(B + fused, P + max(k - 1 if fused else k, 0) * B + fused + B)
            n = P + (k + 1) * B
            f_uncached += flops(n, n)
    return {
        "prompt_tokens": P,
        "blocks": N,
        "block_tokens": B,
        "steps": S,  # model calls per block: the sampler's steps (Heun: 2 steps - 1)
        "forwards": 1 + N * S,
        "tokens_cached": cached,
        "tokens_uncached": uncached,
        "token_ratio": uncached / cached,
        "flops_cached": f_cached,
        "flops_uncached": f_uncached,
        "flop_ratio": f_uncached / f_cached,
    }


def clock(device: torch.device) -> tuple[float, float]:
    """(wall, CPU) time now, after the device's queued work has finished (CUDA runs asynchronously)."""
    sync(device)
    return time.perf_counter(), time.process_time()


def instrumented_run(pipe: Pipeline, prompts: list[str], steps: int, use_cache: bool) -> dict:
    """One call with a pre- and post-hook on the model's forward: the real (non-padding) tokens,
    wall and CPU time of every forward, and the time spent outside the forwards (Engine + sampler)."""
    device = next(pipe.model.parameters()).device
    per: list[tuple[int, float, float, int]] = []
    state: dict = {}

    def pre(module, args, kwargs):
        lay = args[2] if len(args) > 2 else kwargs["layout"]
        state["n"] = int((lay.doc >= 0).sum())
        state["padded"] = lay.doc.numel()
        state["t0"], state["c0"] = clock(device)

    def post(module, args, kwargs, out):
        wall, cpu = (now - then for now, then in zip(clock(device), (state["t0"], state["c0"]), strict=True))
        per.append((state["n"], wall, cpu, state["padded"]))

    h1 = pipe.model.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = pipe.model.register_forward_hook(post, with_kwargs=True)
    try:
        t0, c0 = clock(device)
        pipe.text_to_image(prompts, num_steps=steps, seed=0, use_cache=use_cache, output_type="np")
        total, total_cpu = (now - then for now, then in zip(clock(device), (t0, c0), strict=True))
    finally:
        h1.remove()
        h2.remove()
    inside, inside_cpu = sum(x[1] for x in per), sum(x[2] for x in per)
    return {
        "tokens": sum(x[0] for x in per),
        "padded": sum(x[3] for x in per),
        "forwards": len(per),
        "mean_tokens_per_forward": sum(x[0] for x in per) / len(per),
        "total_s": total,
        "in_forward_s": inside,
        "outside_forward_s": total - inside,
        "total_cpu_s": total_cpu,
        "in_forward_cpu_s": inside_cpu,
        "outside_forward_cpu_s": total_cpu - inside_cpu,
        "ms_per_forward": 1000 * inside / len(per),
        "cpu_ms_per_forward": 1000 * inside_cpu / len(per),
        "samples": [(x[0], x[2]) for x in per],
    }


def fit_latency(samples: list[tuple[int, float]]) -> dict:
    """Least-squares t = a + b n over (tokens, CPU seconds) pairs of forwards."""
    n = torch.tensor([float(x) for x, _ in samples], dtype=torch.float64)
    t = torch.tensor([y for _, y in samples], dtype=torch.float64)
    A = torch.stack([torch.ones_like(n), n], 1)
    a, b = torch.linalg.lstsq(A, t[:, None]).solution[:, 0].tolist()
    return {"fixed_ms": 1000 * a, "per_token_ms": 1000 * b, "knee_tokens": a / b if b > 0 else None}


def time_interleaved(fns: dict, repeats: int, warmup: int, device: torch.device) -> dict:
    """Median wall and CPU time of each function; the functions alternate inside every repeat so
    that load from other processes hits them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall: dict = {k: [] for k in fns}
    cpu: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0, c0 = clock(device)
            fn()
            t1, c1 = clock(device)
            wall[k].append(t1 - t0)
            cpu[k].append(c1 - c0)
    return {
        k: {
            "median_s": statistics.median(wall[k]),
            "min_s": min(wall[k]),
            "cpu_median_s": statistics.median(cpu[k]),
            "times_s": [round(x, 5) for x in wall[k]],
            "cpu_times_s": [round(x, 5) for x in cpu[k]],
        }
        for k in fns
    }


class SectionTimer:
    """Exclusive CPU time (process_time) per section of one sampling call, by wrapping library
    functions for the duration of a `with` block (nothing under unimodal/ is modified). A wrapped
    function's time minus that of the wrapped functions it calls is its own; what no wrapper covers
    (the sampler's update, `generate_image`'s loop, the pipeline) is reported as "unwrapped"."""

    def __init__(self, model: UnifiedModel) -> None:
        from torch import nn

        from unimodal import generation, kv_cache, rope
        from unimodal import model as model_mod
        from unimodal.attention import backends

        self.model = model
        linear_kind = {}
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear):
                leaf = name.split(".")
                kind = "adaLN" if "adaLN_modulation" in leaf else leaf[-1]
                if name.startswith("t_embedder"):
                    kind = "t_embedder"
                if name.startswith("final_layer"):
                    kind = "final_layer." + kind
                linear_kind[id(mod)] = f"linear {kind}"
        self.targets = [
            (generation.Engine, "run", "engine: run (glue)"),
            (generation.Engine, "_chunk", "engine: _chunk (per-segment tensors)"),
            (generation.Engine, "_pack", "engine: _pack (layout, padding, to device)"),
            (generation.Engine, "_outputs", "engine: _outputs (split predictions)"),
            (model_mod.UnifiedModel, "forward", "model: forward (embed, condition, Fields, heads)"),
            (model_mod.UnifiedModel, "condition", "model: condition (t embedding)"),
            (kv_cache.CacheStep, "__init__", "cache: CacheStep (rows, write indices)"),
            (kv_cache.CacheStep, "fields", "cache: fields (cached doc/unit)"),
            (kv_cache.CacheStep, "keys", "cache: keys (views)"),
            (kv_cache.CacheStep, "write", "cache: write (commit K/V)"),
            (kv_cache.CacheStep, "end", "cache: end (lengths)"),
            (backends.AttentionPlan, "__init__", "mask: AttentionPlan (dense rule mask)"),
            (backends.AttentionPlan, "__call__", "attention: SDPA kernel"),
            (rope.RopeND, "tables", "rope: tables (cos/sin)"),
            (rope.RopeND, "apply", "rope: apply"),
            (rope.RopeND, "rotate", "rope: apply"),
            (model_mod.RMSNorm, "forward", "norm: RMSNorm"),
            (model_mod.Block, "modulation", "block: modulation (AdaLN table + gather)"),
            (model_mod.Block, "forward", "block: residuals, AdaLN scale/shift/gate"),
            (model_mod.Attention, "forward", "attention: qkv split, transposes, cat with cache"),
            (model_mod.MLP, "forward", "mlp: activation"),
            (model_mod.FinalLayer, "forward", "final_layer: norm + modulation"),
            (nn.Linear, "forward", None),
        ]
        self.linear_kind = linear_kind
        self.own: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._stack: list[list[float]] = []
        self._saved: list = []
        self.missing: list[str] = []

    def _wrap(self, fn, label):
        timer = self

        def wrapped(*args, **kwargs):
            key = label or timer.linear_kind.get(id(args[0]), "linear other")
            frame = [time.process_time(), 0.0]
            timer._stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                total = time.process_time() - frame[0]
                timer._stack.pop()
                timer.own[key] = timer.own.get(key, 0.0) + total - frame[1]
                timer.calls[key] = timer.calls.get(key, 0) + 1
                if timer._stack:
                    timer._stack[-1][1] += total

        return wrapped

    def __enter__(self):
        found = {label for cls, attr, label in self.targets if attr in cls.__dict__}
        for cls, attr, label in self.targets:
            fn = cls.__dict__.get(attr)
            if fn is None:  # renamed in the library (aliases are listed): its time goes to its caller
                if label not in found:
                    self.missing.append(f"{cls.__name__}.{attr}")
                continue
            self._saved.append((cls, attr, fn))
            setattr(cls, attr, self._wrap(fn, label))
        return self

    def __exit__(self, *exc):
        for cls, attr, fn in reversed(self._saved):
            setattr(cls, attr, fn)
        self._saved.clear()


def profile_call(pipe: Pipeline, prompts: list[str], steps: int, use_cache: bool) -> dict:
    """Exclusive time per section of one sampling call (after a warm-up call), in ms per forward."""
    pipe.text_to_image(prompts, num_steps=steps, seed=0, use_cache=use_cache, output_type="np")
    with SectionTimer(pipe.model) as timer:
        t0 = time.process_time()
        pipe.text_to_image(prompts, num_steps=steps, seed=0, use_cache=use_cache, output_type="np")
        total = time.process_time() - t0
    forwards = timer.calls["model: forward (embed, condition, Fields, heads)"]
    sections = dict(timer.own)
    sections["unwrapped (sampler update, generate_image loop, pipeline)"] = total - sum(timer.own.values())
    rows = sorted(sections.items(), key=lambda kv: -kv[1])
    return {
        "total_s": total,
        "not_found": timer.missing,
        "forwards": forwards,
        "ms_per_forward": 1000 * total / forwards,
        "sections": [
            {"section": k, "ms_per_forward": 1000 * v / forwards, "share": v / total, "calls": timer.calls.get(k, 0)}
            for k, v in rows
        ],
    }


def count_ops(pipe: Pipeline, prompts: list[str], steps: int, use_cache: bool) -> int:
    """aten operations dispatched during one sampling call (views included)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        pipe.text_to_image(prompts, num_steps=steps, seed=0, use_cache=use_cache, output_type="np")
    return Count.n


def forward_floor(model: UnifiedModel, n: int, calls: int = 50) -> dict:
    """CPU ms of a plain forward over one noisy block of n tokens, for the model and for the same
    architecture at dim 32 (the same ops, 1/64 of the weights): how much of a small call is the
    weights and how much the number of ops."""
    from unimodal.layout import VISUAL, Layout

    def one(m: UnifiedModel) -> float:
        z = torch.zeros(1, n, dtype=torch.long)
        lay = Layout(
            z,
            z,
            torch.ones(1, n, dtype=torch.bool),
            torch.full((1, n), VISUAL),
            torch.zeros(1, n, 3, dtype=torch.long),
            z,
            z,
        )
        patches, t = torch.randn(1, n, m.cfg.patch_dim), torch.tensor([0.5])
        times = []
        with torch.no_grad():
            for i in range(calls + 5):
                c0 = time.process_time()
                m(z, patches, lay, t=t, backend="dense")
                if i >= 5:
                    times.append(time.process_time() - c0)
        return 1000 * statistics.median(times)

    small = UnifiedModel(ModelConfig.from_dict({**model.cfg.to_dict(), "dim": 32, "rope_sections": []})).eval()
    return {"tokens": n, "cpu_ms": one(model), "cpu_ms_dim32": one(small), "dim32_parameters": small.num_parameters()}


def loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def bench_config(args, tok, base: UnifiedModel, bs: int, batch: int, threads: int) -> dict:
    import numpy as np

    cfg = base.cfg
    model = with_block_size(base, bs).to(args.device)
    pipe = Pipeline(model, tok, sampler=args.sampler, num_steps=args.steps)
    n_blocks = model.cfg.block_spec.num_blocks(cfg.grid)
    b_len = model.cfg.block_spec.block_len(cfg.grid)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    prompt_lens = [len(tok.encode(p)) + 2 for p in prompts]  # <bos> prompt <boi>
    calls = make_sampler(args.sampler, args.steps, cfg.diffusion).num_calls
    th = [theory(p, n_blocks, b_len, calls, cfg.dim, cfg.depth) for p in prompt_lens]
    tc, tu = sum(t["tokens_cached"] for t in th), sum(t["tokens_uncached"] for t in th)
    fc, fu = sum(t["flops_cached"] for t in th), sum(t["flops_uncached"] for t in th)
    runs = {"cached": instrumented_run(pipe, prompts, args.steps, True)}
    runs["uncached"] = instrumented_run(pipe, prompts, args.steps, False)
    if runs["cached"]["tokens"] != tc or runs["uncached"]["tokens"] != tu:
        raise AssertionError(f"token counts: formula {tc}, {tu}; instrumented {runs}")
    fit = fit_latency(runs["cached"]["samples"] + runs["uncached"]["samples"])
    a, b = fit["fixed_ms"], fit["per_token_ms"]
    predicted = {k: sum(a + b * n for n, _ in r["samples"]) for k, r in runs.items()}
    fit["predicted_speedup"] = predicted["uncached"] / predicted["cached"]
    for r in runs.values():
        del r["samples"]
    entry = {
        "threads": threads,
        "block_size": bs,
        "blocks": n_blocks,
        "block_tokens": b_len,
        "batch": batch,
        "prompt_tokens": prompt_lens,
        "theory_per_image": th[0] if len(set(prompt_lens)) == 1 else th,
        "tokens": {"cached": tc, "uncached": tu},
        "theoretical_speedup_tokens": tu / tc,
        "theoretical_speedup_flops": fu / fc,
        "instrumented": runs,
        "latency_model": fit,
    }
    model_device = next(model.parameters()).device
    modes = [("fp32", None)] + ([] if args.no_bf16 else [("bf16", torch.bfloat16)])
    outs, fns = {}, {}
    for name, dtype in modes:
        for use_cache in (True, False):

            def call(use_cache=use_cache, dtype=dtype):
                with torch.autocast(model_device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                    return pipe.text_to_image(
                        prompts, num_steps=args.steps, seed=0, use_cache=use_cache, output_type="np"
                    )

            key = f"{name}_{'cached' if use_cache else 'uncached'}"
            outs[key] = call()
            fns[key] = call
    entry["loadavg_before"] = loadavg()
    times = time_interleaved(fns, args.repeats, args.warmup, model_device)
    entry["loadavg_after"] = loadavg()
    for t in times.values():
        t["per_image_s"] = t["median_s"] / batch
        t["cpu_per_image_s"] = t["cpu_median_s"] / batch
        t["ms_per_forward"] = 1000 * t["median_s"] / runs["cached"]["forwards"]
    entry["times"] = times
    for name, _ in modes:
        th_ = entry["theoretical_speedup_tokens"]
        speedup = times[f"{name}_uncached"]["median_s"] / times[f"{name}_cached"]["median_s"]
        entry[f"{name}_measured_speedup"] = speedup
        entry[f"{name}_measured_over_theoretical"] = speedup / th_
        best = times[f"{name}_uncached"]["min_s"] / times[f"{name}_cached"]["min_s"]
        entry[f"{name}_measured_speedup_min"] = best
        cpu = times[f"{name}_uncached"]["cpu_median_s"] / times[f"{name}_cached"]["cpu_median_s"]
        entry[f"{name}_measured_speedup_cpu"] = cpu
        entry[f"{name}_measured_over_theoretical_cpu"] = cpu / th_

    def maxdiff(x, y):
        return float(max(np.abs(u - v).max() for u, v in zip(x, y, strict=True)))

    entry["fp32_cached_vs_uncached_max_abs_diff"] = maxdiff(outs["fp32_cached"], outs["fp32_uncached"])
    if not args.no_bf16:
        entry["bf16_finite"] = bool(all(np.isfinite(x).all() for k in outs if k.startswith("bf16") for x in outs[k]))
        entry["bf16_vs_fp32_max_abs_diff"] = maxdiff(outs["bf16_cached"], outs["fp32_cached"])
        entry["bf16_cached_vs_uncached_max_abs_diff"] = maxdiff(outs["bf16_cached"], outs["bf16_uncached"])
        entry["bf16_over_fp32_time"] = {
            k: times[f"bf16_{k}"]["median_s"] / times[f"fp32_{k}"]["median_s"] for k in ("cached", "uncached")
        }
    if args.profile:
        entry["profile"] = {k: profile_call(pipe, prompts, args.steps, k == "cached") for k in ("cached", "uncached")}
        for k, r in runs.items():
            entry["profile"][k]["aten_ops_per_forward"] = (
                count_ops(pipe, prompts, args.steps, k == "cached") / r["forwards"]
            )
        entry["profile"]["forward_floor"] = forward_floor(model, b_len * batch)
    print(
        f"[{threads} threads, {bs}x{bs} tiles = {n_blocks} blocks, batch {batch}] "
        f"theory {entry['theoretical_speedup_tokens']:.2f}x, measured {entry['fp32_measured_speedup']:.2f}x "
        f"= {entry['fp32_measured_over_theoretical']:.2f} of theory "
        f"(CPU time: {entry['fp32_measured_speedup_cpu']:.2f}x "
        f"= {entry['fp32_measured_over_theoretical_cpu']:.2f}); latency model "
        f"{a:.2f} ms + {b:.3f} ms/token predicts {fit['predicted_speedup']:.2f}x",
        file=sys.stderr,
    )
    return entry


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--patch", type=int, default=2)
    ap.add_argument("--block-sizes", type=int, nargs="+", default=[4, 2], help="tile sides in patches")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--sampler", default="euler")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument(
        "--threads", type=int, nargs="+", default=None, help="torch threads (default: the CPUs this process may use)"
    )
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast timings")
    ap.add_argument("--profile", action="store_true", help="add a per-section time breakdown of each path")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (timings synchronise the device)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.profile and args.device != "cpu":
        ap.error("--profile measures CPU time per section: run it with --device cpu")

    default_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    tok = Tokenizer.load(ROOT / "tokenizers_cfg" / "shapes")
    base = random_model(args.preset, tok.vocab_size, args.image_size, args.patch)
    cfg = base.cfg
    result: dict = {
        "benchmark": "cached vs uncached blockwise sampling (Pipeline.text_to_image, no guidance)",
        "command": " ".join(["python", "benchmarks/sampling.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(),
        "source": source_version(),
        "loadavg_start": loadavg(),
        "settings": {
            "preset": args.preset,
            "dim": cfg.dim,
            "depth": cfg.depth,
            "heads": cfg.heads,
            "parameters": base.num_parameters(),
            "vocab_size": cfg.vocab_size,
            "image_size": args.image_size,
            "patch_size": args.patch,
            "grid": list(cfg.grid),
            "device": args.device,
            "sampler": args.sampler,
            "steps": args.steps,
            "guidance": None,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "prompts": PROMPTS,
            "weights": "random N(0, 0.05)",
            "timing": "median of `repeats` calls after `warmup`; the paths alternate within each repeat",
        },
        "configs": [],
    }
    for threads in args.threads or [default_threads]:
        torch.set_num_threads(threads)
        for bs in args.block_sizes:
            for batch in args.batches:
                result["configs"].append(bench_config(args, tok, base, bs, batch, threads))
                write_json(result, args.out)  # partial results survive an interrupted run
    result["loadavg_end"] = loadavg()
    write_json(result, args.out, echo=True)
    return result


if __name__ == "__main__":
    main()
