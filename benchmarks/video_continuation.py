"""Video continuation past the training length: what happens to quality, frame by frame.

    python benchmarks/video_continuation.py runs/video/model --frames 16 \
        --out benchmarks/results/video_continuation.json

A trained video model (e.g. `unimodal train --config shapes-video-tiny`) continues held-out clips
of the built-in shapes videos: the first `--given` frames are prefilled after their caption, the
rest are generated up to `--frames` frames, past the clip length the model was trained on, once
with the whole clip in context and once per `--windows` size (the sliding window over earlier
blocks, `Pipeline.continue_video(window=...)`). Every frame is read back with the shapes judge.

Per frame index it reports, over the clips: the share of frames showing exactly one object, the
share whose object has the caption's colour and shape, the share of steps (frame f-1 -> f) that
move the object in the caption's direction (centre moved along the stated axis, the right way),
the mean distance of the pixels from the black background (collapse to black or blow-up shows
here), and the wall time per generated frame for a few clip lengths (the cost of a growing
context against a bounded one). One JSON object goes to stdout and to `--out`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import write_json

AXIS = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}


def centre(obj: dict) -> np.ndarray:
    x0, y0, x1, y1 = obj["box"]
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2])


def frame_stats(frames: list[np.ndarray], spec: dict) -> list[dict]:
    """Per frame of one clip (T, H, W, 3 uint8): one object, attributes right, motion right."""
    from unimodal.eval.shapes import judge

    want = spec["objects"][0]
    out, prev = [], None
    for f in frames:
        j = judge(f)
        one = j["count"] == 1
        obj = j["objects"][0] if one else None
        row = {
            "one_object": one,
            "attributes": bool(one and obj["color"] == want["color"] and obj["shape"] == want["shape"]),
            "brightness": float(np.abs(f.astype(np.float32)).mean() / 255.0),
            "moves_right_way": None,
        }
        if prev is not None and obj is not None and want.get("motion") in AXIS:
            axis, sign = AXIS[want["motion"]]
            row["moves_right_way"] = bool(sign * (centre(obj) - centre(prev))[axis] > 0)
        out.append(row)
        prev = obj
    return out


def summarise(per_clip: list[list[dict]], given: int) -> list[dict]:
    """Means over clips per frame index (motion: over the steps both of whose frames show one object)."""
    rows = []
    for f in range(len(per_clip[0])):
        col = [c[f] for c in per_clip]
        moves = [r["moves_right_way"] for r in col if r["moves_right_way"] is not None]
        rows.append(
            {
                "frame": f,
                "given": f < given,
                "one_object": float(np.mean([r["one_object"] for r in col])),
                "attributes": float(np.mean([r["attributes"] for r in col])),
                "moves_right_way": float(np.mean(moves)) if moves else None,
                "motion_steps_judged": len(moves),
                "brightness": float(np.mean([r["brightness"] for r in col])),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, help="a trained video model directory (config.json + weights)")
    ap.add_argument("--given", type=int, default=2, help="frames given (prefilled) per clip")
    ap.add_argument("--frames", type=int, default=16, help="frames per clip after continuation")
    ap.add_argument("--windows", type=int, nargs="*", default=[2], help="sliding windows to try (in blocks)")
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from unimodal import Pipeline
    from unimodal.data import load_builtin
    from unimodal.data.shapes.parsing import parse_caption

    pipe = Pipeline.from_pretrained(args.model)
    train_frames = pipe.model.cfg.frames
    ds = load_builtin("shapes", task="video", n=args.clips, split="validation", image_size=pipe.model.cfg.image_size)
    captions, clips = [], []
    for i in range(args.clips):
        text, clip = ds[i].segments
        captions.append(text.text)
        clips.append(np.asarray(clip.data)[: args.given])
    specs = [parse_caption(c) for c in captions]
    result = {
        "benchmark": "video_continuation",
        "model": str(args.model),
        "trained_frames": train_frames,
        "given": args.given,
        "frames": args.frames,
        "clips": args.clips,
        "sampler_steps": args.steps,
        "guidance": args.guidance,
        "seed": args.seed,
        "runs": [],
    }
    lengths = sorted({min(args.given + 2, args.frames), (args.given + args.frames) // 2, args.frames})
    for window in [None, *args.windows]:
        per_frame_s = {}  # clip length -> wall seconds per generated frame (one clip, median of 3)
        for n in lengths:
            runs = []
            for _ in range(3):
                t0 = time.perf_counter()
                pipe.continue_video(
                    clips[:1], n, prompts=captions[:1], window=window, num_steps=args.steps,
                    guidance=args.guidance, seed=args.seed,
                )  # fmt: skip
                runs.append(time.perf_counter() - t0)
            per_frame_s[n] = float(np.median(runs)) / (n - args.given)
        out = pipe.continue_video(
            clips, args.frames, prompts=captions, window=window, num_steps=args.steps,
            guidance=args.guidance, seed=args.seed,
        )  # fmt: skip
        frames = [np.stack([np.asarray(f) for f in clip]) for clip in out]  # PIL frames -> (T, H, W, 3)
        per_clip = [frame_stats(list(f), s) for f, s in zip(frames, specs, strict=True)]
        result["runs"].append(
            {"window": window, "per_frame": summarise(per_clip, args.given), "seconds_per_generated_frame": per_frame_s}
        )
        print(f"window {window}: done", flush=True)
    write_json(result, args.out)


if __name__ == "__main__":
    main()
