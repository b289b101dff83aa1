"""`ShapesDataset`: documents of the built-in `shapes` world for each task, generated from a seed."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...documents import Document, Image, Text
from .captions import edit_instruction, scene_caption, video_caption
from .edits import EDITS, apply_edit
from .parsing import parse_caption
from .render import render_scene, render_video
from .world import CELLS, COLORS, DIRECTIONS, PALETTE, SHAPES, SIZES, _jittered_xy, _pick, geometry

TASKS: tuple[str, ...] = ("t2i", "caption", "scenes", "story", "video")
SPLITS: dict[str, int] = {"train": 0, "test": 1, "val": 2, "validation": 2}


def _heldout(key: Any) -> bool:
    """Whether a scene (by its canonical key) belongs to the held-out part of a disjoint split."""
    return zlib.crc32(json.dumps(key, sort_keys=True).encode()) % 10 == 0


def _scene_key(objects: Sequence[dict]) -> list:
    return sorted([o["color"], o["shape"], o["size"], o["cell"]] for o in objects)


class ShapesDataset(Sequence):
    """Documents of the built-in `shapes` world; item i is a pure function of (seed, split, task, i).

    `ShapesDataset(task="scenes", split="train", seed=0, n=10000, image_size=None, **options)`.
    Splits `train`, `test` (and `val`) are different random streams. Options (all tasks):
    `colors` (names, or how many of `COLORS`; default the first 6), `shapes`, `jitter` (pixels an
    object may shift inside its cell; default 0, so every object of a kind looks the same),
    `disjoint` (default False: when True, 10% of scenes, chosen by a hash of their objects, only
    ever appear in `test`, for compositional generalisation). Per task:

    - `t2i`, `caption`, `scenes`: `min_objects`, `max_objects` (1..1 at 16x16 for t2i/caption;
      1..3 at 32x32 for scenes), `object_weights` (relative odds of each object count from
      `min_objects` to `max_objects`; default None, every count equally likely), `repeat_prob`
      (0.3: chance that objects share colour and shape, so captions with counts occur), `order`
      ("text_first" or "image_first"; scenes only);
    - `story`: `min_objects` 1, `max_objects` 3, `object_weights` (of the first scene),
      `min_edits` 1, `max_edits` 3, `edits` (subset of add, remove, move, recolor),
      `with_caption` (False: start with a caption of the first image);
    - `video`: `frames` 4, `step` (pixels per frame; default fits the path in the image),
      `directions`, `size_prob` 0.5 (how often the caption names the size).
    """

    _DEFAULTS: dict[str, dict[str, Any]] = {
        "t2i": {"image_size": 16, "min_objects": 1, "max_objects": 1, "object_weights": None, "repeat_prob": 0.3},
        "caption": {"image_size": 16, "min_objects": 1, "max_objects": 1, "object_weights": None, "repeat_prob": 0.3},
        "scenes": {
            "image_size": 32,
            "min_objects": 1,
            "max_objects": 3,
            "object_weights": None,
            "repeat_prob": 0.3,
            "order": "text_first",
        },
        "story": {
            "image_size": 32,
            "min_objects": 1,
            "max_objects": 3,
            "object_weights": None,
            "repeat_prob": 0.3,
            "min_edits": 1,
            "max_edits": 3,
            "edits": EDITS,
            "with_caption": False,
        },
        "video": {"image_size": 16, "frames": 4, "step": None, "directions": DIRECTIONS, "size_prob": 0.5},
    }
    _COMMON: dict[str, Any] = {"colors": 6, "shapes": SHAPES, "jitter": 0, "disjoint": False}

    def __init__(
        self,
        task: str = "scenes",
        split: str = "train",
        seed: int = 0,
        n: int = 10000,
        image_size: int | None = None,
        **options: Any,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown shapes task {task!r}; tasks are {TASKS}")
        if split not in SPLITS:
            raise ValueError(f"unknown shapes split {split!r}; splits are {tuple(SPLITS)}")
        if n < 0:
            raise ValueError(f"shapes n must be >= 0, got {n}")
        allowed = {**self._COMMON, **self._DEFAULTS[task]}
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise TypeError(f"shapes task {task!r} got unknown options {unknown}; options are {sorted(allowed)}")
        self.task, self.split, self.seed, self.n = task, split, int(seed), int(n)
        self.opts = {**allowed, **options}
        if image_size is not None:
            self.opts["image_size"] = int(image_size)
        self.image_size = self.opts["image_size"]
        self.geo = geometry(self.image_size)
        colors = self.opts["colors"]
        self.colors = tuple(COLORS[: int(colors)]) if isinstance(colors, int) else tuple(colors)
        self.shapes = tuple(self.opts["shapes"])
        if len(self.colors) < 2 or any(c not in PALETTE for c in self.colors):
            raise ValueError(f"shapes colors must be >= 2 names from {COLORS}, got {colors!r}")
        if not self.shapes or any(s not in SHAPES for s in self.shapes):
            raise ValueError(f"shapes shapes must be names from {SHAPES}, got {self.shapes!r}")
        self._check_counts()

    def _check_counts(self) -> None:
        o = self.opts
        if self.task == "video":
            if o["frames"] < 2:
                raise ValueError(f"shapes video needs frames >= 2, got {o['frames']}")
            if not o["directions"] or any(d not in DIRECTIONS for d in o["directions"]):
                raise ValueError(f"shapes video directions must be from {DIRECTIONS}, got {o['directions']!r}")
            g = self.geo
            room = g.image_size - 2 * g.margin - g.large
            self.step = (
                int(o["step"]) if o["step"] is not None else max(1, min(room // (o["frames"] - 1), g.image_size // 8))
            )
            if self.step < 1 or self.step * (o["frames"] - 1) > room:
                raise ValueError(
                    f"shapes video: {o['frames']} frames of step {self.step} do not fit {g.image_size} pixels"
                )
            return
        lo, hi = o["min_objects"], o["max_objects"]
        cap = 9 if self.geo.scene else 1
        if not 1 <= lo <= hi <= cap:
            need = " (more than one object needs image_size >= 30)" if hi > 1 and not self.geo.scene else ""
            raise ValueError(f"shapes needs 1 <= min_objects <= max_objects <= {cap}, got {lo}..{hi}{need}")
        if o["object_weights"] is not None:
            try:
                w = np.asarray(o["object_weights"], dtype=np.float64)
            except (TypeError, ValueError):
                w = np.empty(0)
            if w.shape != (hi - lo + 1,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
                raise ValueError(
                    f"shapes object_weights must be {hi - lo + 1} finite non-negative numbers, one per object count "
                    f"{lo}..{hi}, not all zero; got {o['object_weights']!r}"
                )
            self.object_p = w / w.sum()
        if "order" in o and o["order"] not in ("text_first", "image_first"):
            raise ValueError(f"shapes order must be 'text_first' or 'image_first', got {o['order']!r}")
        if self.task == "story":
            if not 1 <= o["min_edits"] <= o["max_edits"]:
                raise ValueError(
                    f"shapes story needs 1 <= min_edits <= max_edits, got {o['min_edits']}..{o['max_edits']}"
                )
            if not o["edits"] or any(e not in EDITS for e in o["edits"]):
                raise ValueError(f"shapes story edits must be from {EDITS}, got {o['edits']!r}")
            if set(o["edits"]) <= {"add", "remove"} and lo == hi:
                raise ValueError("shapes story: add/remove-only edits need min_objects < max_objects")

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        args = f"task={self.task!r}, split={self.split!r}, seed={self.seed}, n={self.n}, image_size={self.image_size}"
        return f"ShapesDataset({args})"

    def rng(self, i: int) -> np.random.Generator:
        """The generator of item i: seeded by (seed, split, task, i), so items are independent."""
        return np.random.default_rng([self.seed, SPLITS[self.split], TASKS.index(self.task), i])

    def __getitem__(self, i: int) -> Document:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(self.n))]  # type: ignore[return-value]
        i = int(i)
        if not -self.n <= i < self.n:
            raise IndexError(f"shapes[{i}] out of range for {self.n} documents")
        i %= self.n
        rng = self.rng(i)
        meta: dict[str, Any] = {
            "dataset": "shapes",
            "task": self.task,
            "split": self.split,
            "seed": self.seed,
            "index": i,
            "image_size": self.image_size,
        }
        if self.task == "video":
            return self._video(rng, meta)
        if self.task == "story":
            return self._story(rng, meta)
        scene = self.sample_scene(rng)
        text, style = scene_caption(scene, rng)
        img = Image(render_scene(scene, self.image_size))
        meta.update(scene=scene, caption=text, style=style, spec=parse_caption(text))
        first_text = self.task == "t2i" or self.task == "scenes" and self.opts["order"] == "text_first"
        return Document([Text(text), img] if first_text else [img, Text(text)], meta=meta)

    # -- sampling -------------------------------------------------------------------------------

    def _object(self, rng: np.random.Generator, cell: str | None = None) -> dict:
        """A random object (colour, shape, size drawn in that order), in `cell` when one is given."""
        obj = {
            "color": str(_pick(rng, self.colors)),
            "shape": str(_pick(rng, self.shapes)),
            "size": str(_pick(rng, SIZES)),
        }
        if cell is not None:
            obj["cell"] = cell
        return obj

    def _in_split(self, key: Any) -> bool:
        """Whether a scene or clip (by its canonical key) may appear in this split."""
        return not self.opts["disjoint"] or _heldout(key) == (self.split != "train")

    def _place(self, obj: dict, rng: np.random.Generator) -> dict:
        if self.opts["jitter"]:
            obj["xy"] = _jittered_xy(obj, self.geo, int(self.opts["jitter"]), rng)
        return obj

    def sample_scene(self, rng: np.random.Generator) -> dict:
        """A random scene `{"objects": [...]}` under this dataset's options and split."""
        o = self.opts
        for _ in range(10000):
            lo, hi = o["min_objects"], o["max_objects"]
            # every count equally likely unless weighted (the unweighted draw keeps older datasets bit for bit)
            n = int(
                rng.integers(lo, hi + 1)
                if o["object_weights"] is None
                else lo + rng.choice(hi - lo + 1, p=self.object_p)
            )
            cells = [CELLS[int(k)] for k in rng.choice(9, size=n, replace=False)]
            objs = [self._object(rng, c) for c in cells]
            if n > 1 and rng.random() < o["repeat_prob"]:
                k = int(rng.integers(2, n + 1))
                same_size = rng.random() < 0.7
                for m in objs[1:k]:
                    m.update(color=objs[0]["color"], shape=objs[0]["shape"])
                    if same_size:
                        m["size"] = objs[0]["size"]
            if self._in_split(_scene_key(objs)):
                return {"objects": [self._place(m, rng) for m in objs]}
        raise RuntimeError("shapes: could not sample a scene for this split; the options leave too few scenes")

    def _story(self, rng: np.random.Generator, meta: dict) -> Document:
        o = self.opts
        scenes = [self.sample_scene(rng)]
        edits, texts = [], []
        for _ in range(int(rng.integers(o["min_edits"], o["max_edits"] + 1))):
            cur = scenes[-1]
            objs = cur["objects"]
            taken = {m["cell"] for m in objs}
            free = [c for c in CELLS if c not in taken]
            feasible = {
                "add": len(objs) < o["max_objects"] and bool(free),
                "remove": len(objs) > o["min_objects"],
                "move": bool(free),
                "recolor": len(self.colors) > 1,
            }
            ops = [e for e in o["edits"] if feasible[e]]
            if not ops:
                break
            op = _pick(rng, ops)
            if op == "add":
                edit = {"op": "add", "object": self._place(self._object(rng, _pick(rng, free)), rng)}
            else:
                target = dict(_pick(rng, objs))
                edit = {"op": op, "object": target}
                if op == "move":
                    edit["to"] = _pick(rng, free)
                    if o["jitter"]:
                        edit["xy"] = _jittered_xy({**target, "cell": edit["to"]}, self.geo, int(o["jitter"]), rng)
                elif op == "recolor":
                    edit["to"] = _pick(rng, [c for c in self.colors if c != target["color"]])
            nxt = apply_edit(cur, edit)
            if nxt is None:  # pragma: no cover - sampled edits always apply
                raise RuntimeError(f"shapes story: edit {edit} does not apply to {cur}")
            texts.append(edit_instruction(edit, cur, rng))
            edits.append(edit)
            scenes.append(nxt)
        segments: list[Text | Image] = []
        if o["with_caption"]:
            segments.append(Text(scene_caption(scenes[0], rng)[0]))
        segments.append(Image(render_scene(scenes[0], self.image_size)))
        for text, scene in zip(texts, scenes[1:], strict=True):
            segments += [Text(text), Image(render_scene(scene, self.image_size))]
        meta.update(scenes=scenes, edits=edits, instructions=texts)
        return Document(segments, meta=meta)

    def _video(self, rng: np.random.Generator, meta: dict) -> Document:
        o, g = self.opts, self.geo
        t, step = int(o["frames"]), self.step
        for _ in range(10000):
            obj = self._object(rng)
            direction = str(_pick(rng, o["directions"]))
            if self._in_split([obj["color"], obj["shape"], obj["size"], direction]):
                break
        d = g.extent(obj["size"])
        lo, hi = g.margin, g.image_size - g.margin - d
        travel = step * (t - 1)
        sign = 1 if direction in ("right", "down") else -1
        start = int(rng.integers(lo, hi - travel + 1)) + (travel if sign < 0 else 0)
        cross = int(rng.integers(lo, hi + 1))
        along = [start + sign * step * k for k in range(t)]
        positions = [[a, cross] if direction in ("left", "right") else [cross, a] for a in along]
        text = video_caption(obj, direction, rng, float(o["size_prob"]))
        frames = render_video(obj, positions, self.image_size)
        meta.update(object=obj, direction=direction, positions=positions, caption=text, spec=parse_caption(text))
        return Document([Text(text), Image(frames)], meta=meta)
