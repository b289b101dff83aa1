"""The `shapes` judge: reads colour, shape, size and cell of every object back from pixels.

`judge(image)` classifies each pixel to the nearest of the background and the palette colours,
labels 8-connected regions of one colour, drops specks (under half the smallest object's area),
and reads each region: colour from its class, size from the larger side of its bounding box
(against the midpoint of the small and large extents of the image size's `geometry`), shape as
the best overlap (IoU) with an ideal circle, square and triangle drawn in the same box, cell from
the box centre. Rendered images are read exactly; a generated image is read the same way, so a
blurred, misplaced or wrongly coloured object is judged as what it looks like.

Scores over judged images (`satisfies`, `object_prf`, `count_correct`, `scene_matches`,
`caption_correct`) come from `unimodal.data.shapes` and are re-exported here, with
`t2i_metrics` and `caption_metrics` aggregating them over a set of samples.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data.shapes import (
    BACKGROUND,
    CELLS,
    COLORS,
    PALETTE,
    SHAPES,
    caption_correct,
    count_correct,
    geometry,
    object_mask,
    object_prf,
    relations_of,
    satisfies,
    scene_matches,
)

_CLASS_COLORS = np.array([BACKGROUND, *PALETTE.values()], np.float32)  # class 0 = background


def _tensor_to_numpy(t: Any) -> np.ndarray:
    t = t.detach().to("cpu")
    return t.numpy() if str(t.dtype) == "torch.uint8" else t.float().numpy()


def to_rgb_uint8(image: Any) -> np.ndarray:
    """One image as uint8 (H, W, 3): accepts PIL images, uint8 arrays, float arrays/tensors in
    [-1, 1], channels last (H, W, 3) or first (3, H, W); grey and RGBA are converted."""
    if hasattr(image, "detach"):  # torch tensor
        image = _tensor_to_numpy(image)
    elif not isinstance(image, np.ndarray):
        try:
            from PIL import Image as PILImage
        except ImportError as e:  # pragma: no cover - pillow is a core dependency
            raise TypeError("judge takes an array, a tensor or a PIL image") from e
        if not isinstance(image, PILImage.Image):
            raise TypeError(f"judge takes an array, a tensor or a PIL image, got {type(image).__name__}")
        image = np.asarray(image.convert("RGB"))
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"judge takes one image (H, W, C) or (C, H, W), got shape {a.shape}")
    if a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    a = a[:, :, :3]
    if a.dtype != np.uint8:
        a = np.nan_to_num(a.astype(np.float32), nan=-1.0)
        a = np.round((np.clip(a, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    return a


def _components(labels: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """8-connected regions of equal non-zero label: (label, ys, xs) each."""
    h, w = labels.shape
    seen = np.zeros_like(labels, bool)
    out = []
    for y0, x0 in np.argwhere(labels > 0):
        if seen[y0, x0]:
            continue
        lab = labels[y0, x0]
        stack, ys, xs = [(y0, x0)], [], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            ys.append(y)
            xs.append(x)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    v, u = y + dy, x + dx
                    if 0 <= v < h and 0 <= u < w and not seen[v, u] and labels[v, u] == lab:
                        seen[v, u] = True
                        stack.append((v, u))
        out.append((int(lab), np.array(ys), np.array(xs)))
    return out


def judge(image: Any) -> dict[str, Any]:
    """Read a shapes image back from its pixels.

    Returns `{"objects": [{color, shape, size, cell, box}], "relations": [[i, rel, j]], "count",
    "image_size", "dropped"}` (objects in cell order; `box` = [x0, y0, x1, y1), `dropped` = specks
    ignored) and, when there is exactly one object, its `color`, `shape`, `size` and `position`
    (its cell) at the top level too. The geometry (object sizes) follows from the image size.
    """
    img = to_rgb_uint8(image)
    h, w = img.shape[:2]
    if h != w:
        raise ValueError(f"shapes images are square, got {h}x{w}")
    geo = geometry(h)
    dist = ((img[:, :, None, :].astype(np.float32) - _CLASS_COLORS) ** 2).sum(-1)
    labels = dist.argmin(-1)
    min_area = max(3, int(0.5 * object_mask("triangle", geo.small, geo.small).sum()))
    objects, dropped = [], 0
    for lab, ys, xs in _components(labels):
        if len(ys) < min_area:
            dropped += 1
            continue
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        bh, bw = y1 - y0, x1 - x0
        mask = np.zeros((bh, bw), bool)
        mask[ys - y0, xs - x0] = True
        ious = [(mask & object_mask(s, bh, bw)).sum() / (mask | object_mask(s, bh, bw)).sum() for s in SHAPES]
        row = min(2, (y0 + y1) * 3 // (2 * h))
        col = min(2, (x0 + x1) * 3 // (2 * w))
        objects.append(
            {
                "color": COLORS[lab - 1],
                "shape": SHAPES[int(np.argmax(ious))],
                "size": "large" if max(bh, bw) >= geo.size_threshold else "small",
                "cell": CELLS[3 * row + col],
                "box": [x0, y0, x1, y1],
            }
        )
    objects.sort(key=lambda o: (CELLS.index(o["cell"]), o["box"][1], o["box"][0]))
    out: dict[str, Any] = {
        "objects": objects,
        "relations": relations_of(objects),
        "count": len(objects),
        "image_size": h,
        "dropped": dropped,
    }
    if len(objects) == 1:
        o = objects[0]
        out.update(color=o["color"], shape=o["shape"], size=o["size"], position=o["cell"])
    return out


def _frames(frames: Any) -> list[Any]:
    if hasattr(frames, "detach"):
        frames = _tensor_to_numpy(frames)
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4:
            raise ValueError(f"judge_video takes frames (T, H, W, C) or (T, C, H, W), got shape {frames.shape}")
        return list(frames)
    return list(frames)


def judge_video(frames: Any) -> dict[str, Any]:
    """Read a clip of one moving shape: its attributes and its direction of motion.

    `frames`: (T, H, W, 3) or (T, 3, H, W) array/tensor (uint8, or float in [-1, 1]) or a list of
    images. Returns `{"objects": [{color, shape, size, motion}], "color", "shape", "size",
    "direction", "consistent", "frames"}`: attributes are the most common over frames,
    `consistent` says every frame shows exactly one object with the same attributes and moves
    monotonically, `direction` (left, right, up, down, or "none" when the box centre moves less
    than a pixel) compares the first and last frames. When a frame does not show exactly one
    object, `objects` is empty and `direction` None.
    """
    judged = [judge(f) for f in _frames(frames)]
    out: dict[str, Any] = {"frames": judged, "objects": [], "count": 0, "direction": None, "consistent": False}
    if not judged or any(j["count"] != 1 for j in judged):
        out["count"] = max((j["count"] for j in judged), default=0)
        return out
    objs = [j["objects"][0] for j in judged]
    attrs = {k: Counter(o[k] for o in objs).most_common(1)[0][0] for k in ("color", "shape", "size")}
    centres = np.array([[(o["box"][0] + o["box"][2]) / 2, (o["box"][1] + o["box"][3]) / 2] for o in objs])
    dx, dy = centres[-1] - centres[0]
    if max(abs(dx), abs(dy)) < 1:
        direction = "none"
    elif abs(dx) >= abs(dy):
        direction = "right" if dx > 0 else "left"
    else:
        direction = "down" if dy > 0 else "up"
    steps = np.diff(centres, axis=0)
    axis = 0 if direction in ("left", "right") else 1
    monotone = direction != "none" and bool(
        np.all(np.sign(steps[:, axis]) * np.sign(centres[-1, axis] - centres[0, axis]) >= 0)
    )
    same = all(all(o[k] == attrs[k] for k in attrs) for o in objs)
    out.update(attrs, direction=direction, consistent=same and monotone, count=1)
    out["objects"] = [{**attrs, "cell": objs[0]["cell"], "motion": direction}]
    return out


def video_correct(judged: dict[str, Any], spec: dict | None) -> bool:
    """A judged clip meets a video caption's spec: one consistent object with the stated
    attributes moving in the stated direction."""
    return bool(judged.get("consistent")) and satisfies({"objects": judged["objects"]}, _no_cells(spec))


def _no_cells(spec: dict | None) -> dict | None:
    if spec is None:
        return None
    return {**spec, "objects": [{**o, "cell": None} for o in spec["objects"]]}


def t2i_metrics(judged: Sequence[dict], specs: Sequence[dict | None]) -> dict[str, float]:
    """Text-to-image scores over samples: fraction of images that satisfy their caption
    (`correct`), mean per-object precision and recall, and count accuracy."""
    if len(judged) != len(specs):
        raise ValueError(f"t2i_metrics: {len(judged)} judged images for {len(specs)} specs")
    n = max(len(specs), 1)
    prf = [object_prf(j, s) for j, s in zip(judged, specs, strict=True)]
    return {
        "correct": sum(satisfies(j, s) for j, s in zip(judged, specs, strict=True)) / n,
        "precision": sum(p for p, _ in prf) / n,
        "recall": sum(r for _, r in prf) / n,
        "count_accuracy": sum(count_correct(j, s) for j, s in zip(judged, specs, strict=True)) / n,
        "n": len(specs),
    }


ATTRIBUTE_VIEWS = ("color", "color+shape", "color+size", "color+cell")


def attribute_prf(judged: Sequence[dict], specs: Sequence[dict | None]) -> dict[str, dict[str, float]]:
    """Which attribute fails: mean per-object precision and recall with every spec object reduced
    to its colour and one more attribute (`color+shape`, ...), or its colour alone. A model that
    draws the right colours in the wrong places scores high on `color` and low on `color+cell`."""
    if len(judged) != len(specs):
        raise ValueError(f"attribute_prf: {len(judged)} judged images for {len(specs)} specs")
    n = max(len(specs), 1)
    out = {}
    for view in ATTRIBUTE_VIEWS:
        keep = view.split("+")

        def reduce(spec: dict | None, keep=keep) -> dict | None:
            if spec is None:
                return None
            return {**spec, "objects": [{k: (v if k in keep else None) for k, v in o.items()} for o in spec["objects"]]}

        prf = [object_prf(j, reduce(s)) for j, s in zip(judged, specs, strict=True)]
        out[view] = {"precision": sum(p for p, _ in prf) / n, "recall": sum(r for _, r in prf) / n}
    return out


def caption_metrics(captions: Sequence[str], scenes: Sequence[dict]) -> dict[str, float]:
    """Captioning scores: exact set match of objects and relations (`exact`) and the fraction of
    captions that parse at all (`parsed`)."""
    from ..data.shapes import parse_caption

    if len(captions) != len(scenes):
        raise ValueError(f"caption_metrics: {len(captions)} captions for {len(scenes)} scenes")
    n = max(len(captions), 1)
    return {
        "exact": sum(caption_correct(c, s) for c, s in zip(captions, scenes, strict=True)) / n,
        "parsed": sum(parse_caption(c) is not None for c in captions) / n,
        "n": len(captions),
    }


__all__ = [
    "ATTRIBUTE_VIEWS",
    "attribute_prf",
    "caption_correct",
    "caption_metrics",
    "count_correct",
    "judge",
    "judge_video",
    "object_prf",
    "satisfies",
    "scene_matches",
    "t2i_metrics",
    "to_rgb_uint8",
    "video_correct",
]
