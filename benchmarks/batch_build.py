"""The batch build of a recipe, in its three parts: documents, collation, the whole batch.

    python benchmarks/batch_build.py [--recipe shapes-tiny] [--batches 5] [--out FILE.json] [overrides ...]

The trainer builds each batch on its main thread between steps (`data.prefetch: 0`, the default;
docs/training.md), so every millisecond here is a millisecond of every step. For each of
`--batches` consecutive batches of the recipe's data, timed as the minimum over `--repeat` runs of
`--number` calls (the usual way to time deterministic code on a shared machine):

- `documents_ms`: making the batch's documents (for the built-in data: sampling, rendering and
  captioning scenes; for files: reading and decoding records);
- `collate_ms`: the collation and packing alone (the order swap and prompt dropout, tokenising,
  patches and blocks, the packed layout and targets), including each document's generator;
- `batch_ms`: the whole `next(stream)`, documents, seeds and collation, as the trainer calls it.

The medians over the batches are reported; one JSON object is printed (and written to `--out`).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import timeit
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import write_json  # noqa: E402

from unimodal.data.pipeline import batch_stream  # noqa: E402
from unimodal.train.config import load_config  # noqa: E402
from unimodal.train.trainer import build_model_config, load_tokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="shapes-tiny")
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--number", type=int, default=5, help="calls per timing")
    ap.add_argument("--repeat", type=int, default=8, help="timings per batch; the minimum is kept")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", type=Path)
    ap.add_argument("overrides", nargs="*", help="dotted recipe overrides, e.g. data.collate.pack_rows=384")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.recipe, args.overrides)
    tokenizer = load_tokenizer(cfg.tokenizer, 0)
    stream = batch_stream(cfg.data, tokenizer, build_model_config(cfg, tokenizer))
    n = cfg.data.batch_size
    times: dict[str, list[float]] = {"documents_ms": [], "collate_ms": [], "batch_ms": []}
    tokens = []
    for b in range(args.batches):
        docs = [stream._load(i) for i in range(b * n, (b + 1) * n)]
        keys = list(range(b * n, (b + 1) * n))
        parts = {
            "documents_ms": lambda: [stream._load(i) for i in range(b * n, (b + 1) * n)],  # noqa: B023
            "collate_ms": lambda: stream.collator(docs, [np.random.default_rng(k) for k in keys], keys),  # noqa: B023
            "batch_ms": lambda: next(stream),
        }
        for name, f in parts.items():
            best = min(timeit.repeat(f, number=args.number, repeat=args.repeat)) / args.number
            times[name].append(1000 * best)
        tokens.append(int((next(stream).layout.doc >= 0).sum()))
    result = {
        "benchmark": "batch_build",
        "recipe": args.recipe,
        "overrides": args.overrides,
        "batch": n,
        "tokens_per_batch": statistics.median(tokens),
        **{k: round(statistics.median(v), 3) for k, v in times.items()},
        "per_batch": times,
        "threads": args.threads,
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
    }
    write_json(result, args.out, echo=True)


if __name__ == "__main__":
    main()
