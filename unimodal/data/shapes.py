"""Built-in `shapes`: a procedural world of coloured shapes, compositional captions and edits.

Everything is generated from a seed (no files) and rendered with crisp pixels in pure numpy, so
`unimodal.eval.shapes.judge` can read every attribute back exactly and evaluation measures the
model, not the judge.

The world: 8 well-separated colours (6 used by default), 3 shapes (circle, square, triangle),
2 sizes (small, large), a 3x3 grid of named cells ("top left" ... "bottom right"), a black
background. The geometry is a function of the image size alone (`geometry`):

- image_size >= 30 ("scene" geometry, default 32): each object sits inside its own cell with a
  margin, so up to 9 objects never touch; at 32x32 objects are 5 (small) or 8 (large) pixels.
- 16 <= image_size < 30 ("single" geometry, default 16 for `t2i`, `caption`, `video`): one object,
  larger than a cell (5 and 8 pixels at 16x16), its centre in the named cell.

Tasks (`ShapesDataset(task=...)`), each yielding `Document`s whose `meta` holds the scene(s) as
plain JSON-able dicts:

- `t2i`: `[Text(caption), Image]`; `caption`: `[Image, Text(caption)]` (single shapes by default);
- `scenes`: 1 to 3 objects at 32x32, text then image, captions listing the objects with
  positions, spatial relations ("a small red circle to the left of a large blue square") or
  counts ("two small green triangles"), objects in any order; the default task for training;
- `story`: `[Image, Text(edit), Image, Text(edit), Image, ...]`, 1 to 3 edits that add, remove,
  move or recolour one object; `meta["scenes"]` holds every intermediate scene;
- `video`: `[Text("a red circle moving right"), Image(T x H x W x 3)]`.

Captions are read back by `parse_caption` into a *spec* (objects with optional attributes,
relations between them, the total count); `satisfies(judged, spec)` says whether a judged image
(or a scene) meets it. These are what `unimodal eval` scores with.
"""

from __future__ import annotations

import itertools
import json
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..documents import Document, Image, Text

# ----------------------------------------------------------------------------------------------
# The world
# ----------------------------------------------------------------------------------------------

#: Colour name -> RGB. Pairwise distances >= 100 and >= 180 from the background, so nearest-colour
#: classification is exact under mild noise. The first 6 are the default.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 50),
    "blue": (40, 80, 240),
    "yellow": (240, 230, 30),
    "purple": (160, 50, 220),
    "cyan": (40, 210, 220),
    "orange": (250, 130, 0),
    "white": (240, 240, 240),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
DEFAULT_COLORS: tuple[str, ...] = COLORS[:6]
BACKGROUND: tuple[int, int, int] = (0, 0, 0)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
CELLS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
RELATIONS: tuple[str, ...] = ("left_of", "right_of", "above", "below")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
TASKS: tuple[str, ...] = ("t2i", "caption", "scenes", "story", "video")
EDITS: tuple[str, ...] = ("add", "remove", "move", "recolor")
SPLITS: dict[str, int] = {"train": 0, "test": 1, "val": 2, "validation": 2}
NUMBERS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class Geometry:
    """Pixel sizes of one image size: object extents, the image margin, and whether objects fit
    inside their cells (`scene`, so several can share an image)."""

    image_size: int
    small: int
    large: int
    margin: int = 1
    scene: bool = True

    def extent(self, size: str) -> int:
        return self.small if size == "small" else self.large

    @property
    def size_threshold(self) -> float:
        """Objects whose larger bounding-box side reaches this are `large`."""
        return (self.small + self.large) / 2


def geometry(image_size: int) -> Geometry:
    """The geometry of square images of `image_size` pixels (>= 30: scenes; 16..29: single shapes)."""
    s = int(image_size)
    if s >= 30:
        large = s // 3 - 2
        return Geometry(s, max(5, round(0.6 * large)), large, 1, True)
    if s >= 16:
        return Geometry(s, max(5, round(0.3 * s)), s // 2, 1, False)
    raise ValueError(f"shapes needs image_size >= 16 (>= 30 for multi-object scenes), got {image_size}")


def cell_rc(cell: str) -> tuple[int, int]:
    """(row, column) of a named cell."""
    i = CELLS.index(cell)
    return i // 3, i % 3


def relation_holds(a_cell: str, rel: str, b_cell: str) -> bool:
    """Whether an object in `a_cell` is `rel` (left_of, right_of, above, below) one in `b_cell`."""
    (ra, ca), (rb, cb) = cell_rc(a_cell), cell_rc(b_cell)
    return {"left_of": ca < cb, "right_of": ca > cb, "above": ra < rb, "below": ra > rb}[rel]


def relations_of(objects: Sequence[dict]) -> list[list]:
    """Every true relation [i, rel, j] between objects with cells (i != j)."""
    out = []
    for i, a in enumerate(objects):
        for j, b in enumerate(objects):
            if i != j and a.get("cell") and b.get("cell"):
                out.extend([i, r, j] for r in RELATIONS if relation_holds(a["cell"], r, b["cell"]))
    return out


def describe(obj: dict) -> str:
    """'small red circle' (attributes that are set, in size-colour-shape order)."""
    return " ".join(str(obj[k]) for k in ("size", "color", "shape") if obj.get(k))


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def object_mask(shape: str, h: int, w: int | None = None) -> np.ndarray:
    """Boolean mask of `shape` filling an h x w box: its bounding box is exactly the box.

    Circles are discs through pixel centres; triangles point up, widening from 1-2 pixels at the
    apex to the full base, so fill ratios (square 1, circle ~0.8, triangle ~0.5) stay distinct.
    """
    w = h if w is None else w
    if shape == "square":
        return np.ones((h, w), bool)
    yy = (np.arange(h) + 0.5 - h / 2)[:, None] / (h / 2)
    xx = (np.arange(w) + 0.5 - w / 2)[None, :] / (w / 2)
    if shape == "circle":
        return yy**2 + xx**2 <= 1.0 + 1e-9
    if shape == "triangle":
        apex = 1 if w % 2 else 2
        rows = np.arange(h)
        widths = apex + 2 * np.floor(rows * (w - apex) / (2 * max(h - 1, 1)) + 1e-9).astype(int)
        x = np.arange(w)[None, :]
        left = (w - widths[:, None]) // 2
        return (x >= left) & (x < left + widths[:, None])
    raise ValueError(f"unknown shape {shape!r}; shapes are {SHAPES}")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def placement_range(cell_index: int, d: int, geo: Geometry) -> tuple[int, int]:
    """Inclusive range of the top-left coordinate (along one axis) of a d-pixel object in grid
    line `cell_index` (0..2): inside the cell with a one-pixel margin for scenes (objects in
    neighbouring cells never touch), or with its centre in the cell for single shapes."""
    s, m = geo.image_size, geo.margin
    if geo.scene:
        return _ceil_div(cell_index * s, 3) + 1, _ceil_div((cell_index + 1) * s, 3) - 1 - d
    xs = [x for x in range(m, s - m - d + 1) if (2 * x + d) * 3 // (2 * s) == cell_index]
    if not xs:
        raise ValueError(f"no room for a {d}-pixel object in line {cell_index} of a {s}-pixel image")
    return min(xs), max(xs)


def default_xy(obj: dict, geo: Geometry) -> tuple[int, int]:
    """Top-left pixel (x, y) of an object: centred in its cell as far as the range allows."""
    r, c = cell_rc(obj["cell"])
    d = geo.extent(obj["size"])
    out = []
    for k in (c, r):
        lo, hi = placement_range(k, d, geo)
        out.append(int(min(max(int(np.floor((2 * k + 1) * geo.image_size / 6 - d / 2 + 0.5)), lo), hi)))
    return out[0], out[1]


def render_scene(scene: dict | Sequence[dict], image_size: int) -> np.ndarray:
    """uint8 (S, S, 3) image of a scene's objects (each at its `xy` if given, else its cell)."""
    geo = geometry(image_size)
    img = np.empty((geo.image_size, geo.image_size, 3), np.uint8)
    img[:] = BACKGROUND
    for obj in _objects(scene):
        x, y = obj.get("xy") or default_xy(obj, geo)
        d = geo.extent(obj["size"])
        if x < 0 or y < 0 or x + d > geo.image_size or y + d > geo.image_size:
            raise ValueError(f"object {describe(obj)} at {(x, y)} does not fit a {geo.image_size}-pixel image")
        region = img[y : y + d, x : x + d]
        region[object_mask(obj["shape"], d)] = PALETTE[obj["color"]]
    return img


def render_video(obj: dict, positions: Sequence[Sequence[int]], image_size: int) -> np.ndarray:
    """uint8 (T, S, S, 3) clip of one object at top-left pixel positions (x, y), one per frame."""
    o = {k: obj[k] for k in ("color", "shape", "size")}
    return np.stack([render_scene([{**o, "xy": [int(x), int(y)]}], image_size) for x, y in positions])


# ----------------------------------------------------------------------------------------------
# Captions: generation
# ----------------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, seq: Sequence) -> Any:
    return seq[int(rng.integers(len(seq)))]


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _np(obj: dict, count: int = 1, with_size: bool = True) -> str:
    words = [obj["size"]] if with_size else []
    words += [obj["color"], obj["shape"] + ("s" if count > 1 else "")]
    det = _article(words[0]) if count == 1 else NUMBERS[count]
    return f"{det} {' '.join(words)}"


def _position_phrase(cell: str, rng: np.random.Generator) -> str:
    r, c = cell_rc(cell)
    hor = {0: "left", 2: "right"}.get(c)
    if r != 1 and hor:
        vert = _pick(rng, ("top", "top", "upper") if r == 0 else ("bottom", "bottom", "lower"))
        return _pick(rng, (f"at the {vert} {hor}", f"in the {vert} {hor}", f"in the {vert} {hor} corner"))
    if r != 1:
        vert = "top" if r == 0 else "bottom"
        return _pick(rng, (f"at the {vert}", f"at the {vert} center", f"in the {vert} middle"))
    if hor:
        return _pick(rng, (f"on the {hor}", f"at the {hor}", f"on the {hor} side"))
    return _pick(rng, ("in the center", "in the middle", "at the center", "in the centre"))


_REL_PHRASES = {
    "left_of": ("to the left of", "left of", "on the left of"),
    "right_of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "above", "over"),
    "below": ("below", "below", "under", "beneath"),
}


def _relation_phrase(a: dict, b: dict, rng: np.random.Generator) -> str:
    rel = _pick(rng, [r for r in RELATIONS if relation_holds(a["cell"], r, b["cell"])])
    return _pick(rng, _REL_PHRASES[rel])


def _join(parts: list[str], rng: np.random.Generator) -> str:
    if len(parts) == 1:
        return parts[0]
    style = int(rng.integers(3))
    if style == 2:
        return "; ".join(parts)
    return ", ".join(parts[:-1]) + ("," if style == 1 and len(parts) > 2 else "") + " and " + parts[-1]


def _with_prefix(text: str, n: int, rng: np.random.Generator) -> str:
    """Sometimes lead in with 'there is/are', 'an image of', 'a picture with' or 'three objects:'."""
    there = "there is " if text.split(" ", 1)[0] in ("a", "an") else "there are "
    options = ["", "", there, "an image of ", "a picture with "]
    if n > 1:
        options.append(f"{NUMBERS[n]} objects: ")
    return _pick(rng, options) + text


def scene_caption(scene: dict | Sequence[dict], rng: np.random.Generator) -> tuple[str, str]:
    """A caption of a scene and the name of its style (`positions`, `relations` or `counts`).

    Every style names every object with size, colour and shape, in a random order; `positions`
    places each in its cell, `relations` chains true spatial relations ("..., which is above ..."),
    `counts` groups identical objects ("two small red circles"), sometimes with their cells.
    """
    objs = _objects(scene)
    n = len(objs)
    order = [objs[int(i)] for i in rng.permutation(n)]
    styles = ["positions", "counts"] + (["relations"] if n > 1 else [])
    style = _pick(rng, styles)
    if style == "positions":
        if n == 1 and rng.random() < 0.3:
            pos = _position_phrase(order[0]["cell"], rng)
            return _pick(rng, (f"{pos} there is {_np(order[0])}", f"{pos}, {_np(order[0])}")), style
        parts = [f"{_np(o)} {_position_phrase(o['cell'], rng)}" for o in order]
        return _with_prefix(_join(parts, rng), n, rng), style
    if style == "relations":
        text = f"{_np(order[0])} {_relation_phrase(order[0], order[1], rng)} {_np(order[1])}"
        for prev, o in itertools.pairwise(order[1:]):
            if rng.random() < 0.5:
                text += f", which is {_relation_phrase(prev, o, rng)} {_np(o)}"
            else:
                text += f"{_pick(rng, (' and ', ', and ', '; '))}{_np(o)} {_position_phrase(o['cell'], rng)}"
        return _pick(rng, ("", "", "there is ", "an image of ")) + text, style
    groups: dict[str, list[dict]] = {}
    for o in order:
        groups.setdefault(describe(o), []).append(o)
    with_pos = n == 1 or rng.random() < 0.5
    parts = []
    for members in groups.values():
        part = _np(members[0], len(members))
        if with_pos:
            cells = [_position_phrase(m["cell"], rng) for m in members]
            part += " " + cells[0] + "".join(" and " + c for c in cells[1:])
        parts.append(part)
    return _with_prefix(_join(parts, rng), n, rng), style


_DIR_PHRASES = {
    "left": ("left", "to the left", "leftwards"),
    "right": ("right", "to the right", "rightwards"),
    "up": ("up", "upwards", "up"),
    "down": ("down", "downwards", "down"),
}


def video_caption(obj: dict, direction: str, rng: np.random.Generator, size_prob: float = 0.5) -> str:
    """'a red circle moving right' and variants (the size is named with probability `size_prob`)."""
    noun = _np(obj, with_size=bool(rng.random() < size_prob))
    verb = _pick(rng, ("moving", "moving", "moves", "going", "sliding", "travelling"))
    return f"{noun} {verb} {_pick(rng, _DIR_PHRASES[direction])}"


# ----------------------------------------------------------------------------------------------
# Captions: parsing
# ----------------------------------------------------------------------------------------------

_COUNT = {w: i for i, w in enumerate(NUMBERS) if i} | {"a": 1, "an": 1, "single": 1}
_SIZE_WORDS = {"small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large"}
_COLOR_WORDS = {c: c for c in COLORS} | {"violet": "purple", "turquoise": "cyan"}
_SHAPE_WORDS = {s: (s, False) for s in SHAPES} | {s + "s": (s, True) for s in SHAPES}
_POS_WORDS = {"top", "upper", "bottom", "lower", "left", "right", "center", "centre", "middle"}
_POS_SUFFIX = {"corner", "side", "edge", "part", "area", "cell"}
_FRAME = {"image", "picture", "scene", "photo", "drawing", "frame", "canvas", "clip", "video"}
_OBJ_NOUNS = {"object", "objects", "shape", "shapes", "thing", "things", "item", "items"}
_SEPS = {",", ";", ":", ".", "!", "and", "then", "plus"}
_FILLER = {"there", "is", "are", "which", "that", "it", "also", "we", "see", "shows", "showing", "contains"}
_FILLER |= {"containing", "has", "have", "with", "here"}
_REL_PATTERNS: list[tuple[tuple[str, ...], str]] = [
    (("to", "the", "left", "of"), "left_of"),
    (("on", "the", "left", "of"), "left_of"),
    (("left", "of"), "left_of"),
    (("to", "the", "right", "of"), "right_of"),
    (("on", "the", "right", "of"), "right_of"),
    (("right", "of"), "right_of"),
    (("on", "top", "of"), "above"),
    (("above",), "above"),
    (("over",), "above"),
    (("below",), "below"),
    (("under",), "below"),
    (("beneath",), "below"),
    (("underneath",), "below"),
]
_MOTION_VERBS = {"moving", "moves", "move", "going", "goes", "sliding", "slides", "travelling", "traveling"}
_MOTION_VERBS |= {"travels", "drifting", "drifts", "heading", "heads", "rolling", "rolls"}
_DIR_WORDS = {"left": "left", "leftward": "left", "leftwards": "left", "right": "right", "rightward": "right"}
_DIR_WORDS |= {"rightwards": "right", "up": "up", "upward": "up", "upwards": "up", "down": "down"}
_DIR_WORDS |= {"downward": "down", "downwards": "down"}


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+|\d+|[,;:.!]", text.lower().replace("-", " "))


def _cell_from_words(words: list[str]) -> str | None:
    row = col = None
    for w in words:
        if w in ("top", "upper", "bottom", "lower"):
            r = 0 if w in ("top", "upper") else 2
            if row is not None and row != r:
                return None
            row = r
        elif w in ("left", "right"):
            c = 0 if w == "left" else 2
            if col is not None and col != c:
                return None
            col = c
    return CELLS[3 * (1 if row is None else row) + (1 if col is None else col)]


def _match(toks: list[str], i: int, pattern: Sequence[str]) -> bool:
    return tuple(toks[i : i + len(pattern)]) == tuple(pattern)


def _parse_position(toks: list[str], i: int, preps: Sequence[str] = ("at", "in", "on", "along", "near")):
    """A position phrase at toks[i] -> (cell, next index), or None."""
    j = i
    if j < len(toks) and toks[j] in preps:
        j += 1
    if j < len(toks) and toks[j] == "the":
        j += 1
    if j == i:
        return None
    k = j
    while k < len(toks) and toks[k] in _POS_WORDS:
        k += 1
    if k == j:
        return None
    words = toks[j:k]
    while k < len(toks) and toks[k] in _POS_SUFFIX:
        k += 1
    if k < len(toks) and toks[k] == "of":
        if k + 2 < len(toks) and toks[k + 1] in ("the", "this") and toks[k + 2] in _FRAME:
            k += 3
        else:
            return None  # "on the left of X" is a relation
    cell = _cell_from_words(words)
    return None if cell is None else (cell, k)


def _parse_relation(toks: list[str], i: int):
    for pattern, rel in _REL_PATTERNS:
        if _match(toks, i, pattern):
            return rel, i + len(pattern)
    return None


def _parse_motion(toks: list[str], i: int):
    if toks[i] not in _MOTION_VERBS:
        return None
    j = i + 1
    for lead in (("to", "the"), ("towards", "the"), ("toward", "the"), ("to",)):
        if _match(toks, j, lead):
            j += len(lead)
            break
    if j < len(toks) and toks[j] in _DIR_WORDS and not _match(toks, j + 1, ("of",)):
        return _DIR_WORDS[toks[j]], j + 1
    return None


def _parse_group(toks: list[str], i: int, strict: bool):
    """'[count] [size] [colour] shape' at toks[i] -> (count, attributes, next index), or None."""
    j, count = i, None
    if j >= len(toks):
        return None
    if toks[j] in _COUNT or toks[j].isdigit():
        count = _COUNT.get(toks[j]) or int(toks[j])
        j += 1
    attrs: dict[str, str] = {}
    while j < len(toks) and (toks[j] in _SIZE_WORDS or toks[j] in _COLOR_WORDS):
        key, val = ("size", _SIZE_WORDS[toks[j]]) if toks[j] in _SIZE_WORDS else ("color", _COLOR_WORDS[toks[j]])
        if attrs.get(key, val) != val:
            return None
        attrs[key] = val
        j += 1
    if j >= len(toks) or toks[j] not in _SHAPE_WORDS:
        return None
    shape, plural = _SHAPE_WORDS[toks[j]]
    attrs["shape"] = shape
    if count is None:
        if plural and strict:
            return None
        count = 2 if plural else 1
    if strict and plural != (count > 1):
        return None
    if not 1 <= count <= 9:
        return None
    return count, attrs, j + 1


def _new_object(attrs: dict | None = None) -> dict:
    obj = {"color": None, "shape": None, "size": None, "cell": None, "motion": None}
    obj.update(attrs or {})
    return obj


def parse_caption(text: str, strict: bool = True) -> dict | None:
    """Read a caption back into the constraints it states, or None when it cannot be read.

    Returns a spec `{"objects": [{color, shape, size, cell, motion}], "relations": [[i, rel, j]],
    "count": n}`: one entry per object named (`None` for attributes not stated), relations
    between object indices, and the total number of objects (stated as "three objects: ...",
    else the number named). A relation between groups ("two red circles above a blue square")
    holds for every pair. `strict` rejects unknown words and number disagreement ("a circles");
    otherwise they are skipped. Never raises on text.
    """
    if not isinstance(text, str):
        return None
    toks = _tokens(text)
    objects: list[dict] = []
    relations: list[list] = []
    total: int | None = None
    last: list[int] | None = None
    pending_rel: tuple[str, list[int]] | None = None
    pending_cell: str | None = None
    i = 0
    while i < len(toks):
        t = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if t in ("a", "an", "the", "this") and nxt in _FRAME or t in ("in", "on") and _match(toks, i + 1, ("this",)):
            i += 2 if t != "in" and t != "on" else 3
            while i < len(toks) and toks[i] in ("of", "with", "shows", "showing", "containing"):
                i += 1
            continue
        if (t in _COUNT or t.isdigit()) and nxt in _OBJ_NOUNS:
            total = _COUNT.get(t) or int(t)
            i += 2
            continue
        rel = _parse_relation(toks, i)
        if rel is not None:
            if last is None or pending_rel is not None:
                return None
            pending_rel, i = (rel[0], last), rel[1]
            continue
        motion = _parse_motion(toks, i)
        if motion is not None:
            if last is None:
                return None
            for k in last:
                objects[k]["motion"] = motion[0]
            i = motion[1]
            continue
        pos = _parse_position(toks, i)
        if pos is not None:
            cell, i = pos
            if last is None or pending_rel is not None:
                if pending_cell is not None:
                    return None
                pending_cell = cell
                continue
            free = [k for k in last if objects[k]["cell"] is None]
            if not free:
                if strict:
                    return None
                continue
            objects[free[0]]["cell"] = cell
            continue
        group = (
            _parse_group(toks, i, strict)
            if t in _COUNT or t.isdigit() or t in _SIZE_WORDS or t in _COLOR_WORDS
            else None
        )
        if group is None and t in _SHAPE_WORDS:
            group = _parse_group(toks, i, strict)
        if group is not None:
            count, attrs, i = group
            idx = list(range(len(objects), len(objects) + count))
            objects.extend(_new_object(attrs) for _ in idx)
            if pending_cell is not None:
                objects[idx[0]]["cell"], pending_cell = pending_cell, None
            if pending_rel is not None:
                rel_name, subject = pending_rel
                relations.extend([s, rel_name, o] for s in subject for o in idx)
                pending_rel = None
            last = idx
            continue
        if t in _SEPS or t in _FILLER or t == "its":
            i += 1
            continue
        if strict:
            return None
        i += 1
    if not objects or pending_rel is not None or pending_cell is not None:
        return None
    return {"objects": objects, "relations": relations, "count": len(objects) if total is None else total}


# ----------------------------------------------------------------------------------------------
# Scores: does a judged image (or a scene) satisfy a spec?
# ----------------------------------------------------------------------------------------------

_ATTRS = ("color", "shape", "size", "cell", "motion")


def _objects(x: Any) -> list[dict]:
    if x is None:
        return []
    if isinstance(x, dict):
        return list(x.get("objects") or [])
    return list(x)


def _attr_match(spec_obj: dict, obj: dict) -> bool:
    return all(spec_obj.get(k) is None or spec_obj.get(k) == obj.get(k) for k in _ATTRS)


def spec_from_scene(scene: dict | Sequence[dict]) -> dict:
    """The fully specified spec of a scene: every object with its cell, no extra relations."""
    objs = [_new_object({k: o.get(k) for k in _ATTRS if o.get(k) is not None}) for o in _objects(scene)]
    return {"objects": objs, "relations": [], "count": len(objs)}


def satisfies(judged: dict | Sequence[dict] | None, spec: dict | None) -> bool:
    """Whether a judged image (or scene) meets a spec: exactly `count` objects, a one-to-one
    assignment of the spec's objects to them with every stated attribute equal, and every stated
    relation true of the assigned objects' cells. None (unreadable caption or image) is False."""
    if judged is None or spec is None:
        return False
    objs, sobjs = _objects(judged), spec.get("objects") or []
    if len(objs) != spec.get("count", len(sobjs)) or len(sobjs) > len(objs):
        return False
    rels = spec.get("relations") or []
    assign: list[int] = []

    def ok_relations() -> bool:
        n = len(assign)
        for i, rel, j in rels:
            if i < n and j < n and (i == n - 1 or j == n - 1):
                a, b = objs[assign[i]].get("cell"), objs[assign[j]].get("cell")
                if a is None or b is None or not relation_holds(a, rel, b):
                    return False
        return True

    def search(i: int) -> bool:
        if i == len(sobjs):
            return True
        for j, o in enumerate(objs):
            if j not in assign and _attr_match(sobjs[i], o):
                assign.append(j)
                if ok_relations() and search(i + 1):
                    return True
                assign.pop()
        return False

    return search(0)


def object_prf(judged: dict | Sequence[dict] | None, spec: dict | None) -> tuple[float, float]:
    """(precision, recall) of judged objects against the spec's objects: the largest one-to-one
    matching on stated attributes (cells included where stated; relations ignored). An unreadable
    spec (None) scores (0, 0)."""
    if spec is None:
        return 0.0, 0.0
    objs, sobjs = _objects(judged), _objects(spec)
    match: dict[int, int] = {}  # judged index -> spec index

    def augment(i: int, seen: set[int]) -> bool:
        for j, o in enumerate(objs):
            if j not in seen and _attr_match(sobjs[i], o):
                seen.add(j)
                if j not in match or augment(match[j], seen):
                    match[j] = i
                    return True
        return False

    matched = sum(augment(i, set()) for i in range(len(sobjs)))
    precision = matched / len(objs) if objs else float(not sobjs)
    recall = matched / len(sobjs) if sobjs else 1.0
    return precision, recall


def count_correct(judged: dict | Sequence[dict] | None, spec: dict | None) -> bool:
    """Whether the number of judged objects equals the number the spec states."""
    if spec is None:
        return False
    return len(_objects(judged)) == spec.get("count", len(spec.get("objects") or []))


def caption_correct(text: str, scene: dict | Sequence[dict]) -> bool:
    """Exact match for captioning: the caption parses, names every object of the scene with
    colour, shape and size (no more, no fewer), and every position and relation it states is true."""
    spec = parse_caption(text)
    if spec is None or any(o[k] is None for o in spec["objects"] for k in ("color", "shape", "size")):
        return False
    return satisfies(scene, spec)


def scene_matches(judged: dict | Sequence[dict] | None, scene: dict | Sequence[dict]) -> bool:
    """Whether judged objects equal a scene's objects (colour, shape, size and cell), as multisets."""
    return satisfies(judged, spec_from_scene(scene))


# ----------------------------------------------------------------------------------------------
# Edits (stories)
# ----------------------------------------------------------------------------------------------

_ADD_VERBS = ("add", "put", "place", "draw", "insert")
_REMOVE_VERBS = ("remove", "delete", "erase")
_MOVE_VERBS = ("move", "shift", "slide")
_RECOLOR_VERBS = ("make", "recolour", "recolor", "paint", "turn", "colour", "color")


def _ref(obj: dict, scene_objects: Sequence[dict], rng: np.random.Generator) -> str:
    unique = sum(describe(o) == describe(obj) for o in scene_objects) == 1
    ref = f"the {describe(obj)}"
    if not unique or rng.random() < 0.25:
        ref += " " + _position_phrase(obj["cell"], rng)
    return ref


def _cell_words(cell: str, rng: np.random.Generator) -> str:
    return _pick(rng, ("center", "middle")) if cell == "center" else cell


def edit_instruction(edit: dict, scene: dict | Sequence[dict], rng: np.random.Generator) -> str:
    """The text of an edit applied to `scene` (the scene before the edit)."""
    objs, op, obj = _objects(scene), edit["op"], edit["object"]
    if op == "add":
        return f"{_pick(rng, _ADD_VERBS[:4])} {_np(obj)} {_position_phrase(obj['cell'], rng)}"
    ref = _ref(obj, objs, rng)
    if op == "remove":
        return f"{_pick(rng, (*_REMOVE_VERBS, 'take away'))} {ref}"
    if op == "move":
        return f"{_pick(rng, _MOVE_VERBS)} {ref} to the {_cell_words(edit['to'], rng)}"
    if op == "recolor":
        verb = _pick(rng, ("make", "recolour", "paint", "turn", "change", "change the colour of"))
        return f"{verb} {ref} to {edit['to']}" if verb.startswith("change") else f"{verb} {ref} {edit['to']}"
    raise ValueError(f"unknown edit {op!r}; edits are {EDITS}")


def _parse_ref(toks: list[str], i: int):
    """'the [size] [colour] shape [at the cell]' -> (partial object, next index), or None."""
    if i >= len(toks) or toks[i] != "the":
        return None
    g = _parse_group(["a", *toks[i + 1 :]], 0, strict=True)
    if g is None or g[0] != 1:
        return None
    obj, j = _new_object(g[1]), i + g[2]
    pos = _parse_position(toks, j) if j < len(toks) and toks[j] in ("at", "in", "on") else None
    if pos is not None:
        obj["cell"], j = pos
    return obj, j


def parse_instruction(text: str) -> dict | None:
    """Read an edit instruction back: `{"op": add|remove|move|recolor, "object": {...}, "to": ...}`
    (`to` a cell for moves, a colour for recolours), or None when it cannot be read."""
    if not isinstance(text, str):
        return None
    toks = _tokens(text)
    while toks and toks[-1] in _SEPS:
        toks.pop()
    if not toks:
        return None
    verb = toks[0]
    if verb in _ADD_VERBS:
        g = _parse_group(toks, 1, strict=True)
        if g is None or g[0] != 1:
            return None
        obj, j = _new_object(g[1]), g[2]
        pos = _parse_position(toks, j)
        if pos is not None:
            obj["cell"], j = pos
        return {"op": "add", "object": obj} if j == len(toks) else None
    if verb in _REMOVE_VERBS or _match(toks, 0, ("take", "away")) or _match(toks, 0, ("take", "out")):
        r = _parse_ref(toks, 2 if verb == "take" else 1)
        return {"op": "remove", "object": r[0]} if r and r[1] == len(toks) else None
    if verb in _MOVE_VERBS:
        r = _parse_ref(toks, 1)
        if r is None or not _match(toks, r[1], ("to",)):
            return None
        pos = _parse_position(toks, r[1] + 1, preps=())
        return {"op": "move", "object": r[0], "to": pos[0]} if pos and pos[1] == len(toks) else None
    if verb == "change":
        start = 4 if _match(toks, 1, ("the", "colour", "of")) or _match(toks, 1, ("the", "color", "of")) else 1
        r = _parse_ref(toks, start)
        if r is None or not _match(toks, r[1], ("to",)) or r[1] + 2 != len(toks):
            return None
        color = _COLOR_WORDS.get(toks[r[1] + 1])
        return {"op": "recolor", "object": r[0], "to": color} if color else None
    if verb in _RECOLOR_VERBS:
        r = _parse_ref(toks, 1)
        if r is None or r[1] + 1 != len(toks) or toks[r[1]] not in _COLOR_WORDS:
            return None
        return {"op": "recolor", "object": r[0], "to": _COLOR_WORDS[toks[r[1]]]}
    return None


def apply_edit(scene: dict | Sequence[dict], edit: dict | None) -> dict | None:
    """The scene after an edit (a new dict; objects keep their order, a removed one drops out, an
    added one comes last), or None when the edit does not apply: its object is not found exactly
    once, or the target cell is taken."""
    if edit is None:
        return None
    objs = [dict(o) for o in _objects(scene)]
    ref, op = edit.get("object") or {}, edit.get("op")
    taken = {o["cell"] for o in objs}
    if op == "add":
        if (
            ref.get("cell") is None
            or ref["cell"] in taken
            or any(ref.get(k) is None for k in ("color", "shape", "size"))
        ):
            return None
        new = {k: ref[k] for k in ("color", "shape", "size", "cell")}
        if ref.get("xy") is not None:
            new["xy"] = list(ref["xy"])
        return {"objects": [*objs, new]}
    hits = [i for i, o in enumerate(objs) if _attr_match({k: v for k, v in ref.items() if k != "xy"}, o)]
    if len(hits) != 1:
        return None
    k = hits[0]
    if op == "remove":
        return {"objects": objs[:k] + objs[k + 1 :]}
    if op == "move":
        if edit.get("to") not in CELLS or edit["to"] in taken:
            return None
        objs[k]["cell"] = edit["to"]
        objs[k].pop("xy", None)
        if edit.get("xy") is not None:
            objs[k]["xy"] = list(edit["xy"])
        return {"objects": objs}
    if op == "recolor":
        if edit.get("to") not in PALETTE:
            return None
        objs[k]["color"] = edit["to"]
        return {"objects": objs}
    return None


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------


def _jittered_xy(obj: dict, geo: Geometry, jitter: int, rng: np.random.Generator) -> list[int]:
    r, c = cell_rc(obj["cell"])
    d = geo.extent(obj["size"])
    x0, y0 = default_xy(obj, geo)
    out = []
    for v, k in ((x0, c), (y0, r)):
        lo, hi = placement_range(k, d, geo)
        out.append(int(min(max(v + int(rng.integers(-jitter, jitter + 1)), lo), hi)))
    return out


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
      1..3 at 32x32 for scenes), `repeat_prob` (0.3: chance that objects share colour and shape, so
      captions with counts occur), `order` ("text_first" or "image_first"; scenes only);
    - `story`: `min_objects` 1, `max_objects` 3, `min_edits` 1, `max_edits` 3, `edits` (subset of
      add, remove, move, recolor), `with_caption` (False: start with a caption of the first image);
    - `video`: `frames` 4, `step` (pixels per frame; default fits the path in the image),
      `directions`, `size_prob` 0.5 (how often the caption names the size).
    """

    _DEFAULTS: dict[str, dict[str, Any]] = {
        "t2i": {"image_size": 16, "min_objects": 1, "max_objects": 1, "repeat_prob": 0.3},
        "caption": {"image_size": 16, "min_objects": 1, "max_objects": 1, "repeat_prob": 0.3},
        "scenes": {"image_size": 32, "min_objects": 1, "max_objects": 3, "repeat_prob": 0.3, "order": "text_first"},
        "story": {
            "image_size": 32,
            "min_objects": 1,
            "max_objects": 3,
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

    def _object(self, rng: np.random.Generator, cell: str) -> dict:
        return {
            "color": str(_pick(rng, self.colors)),
            "shape": str(_pick(rng, self.shapes)),
            "size": str(_pick(rng, SIZES)),
            "cell": cell,
        }

    def _place(self, obj: dict, rng: np.random.Generator) -> dict:
        if self.opts["jitter"]:
            obj["xy"] = _jittered_xy(obj, self.geo, int(self.opts["jitter"]), rng)
        return obj

    def sample_scene(self, rng: np.random.Generator) -> dict:
        """A random scene `{"objects": [...]}` under this dataset's options and split."""
        o = self.opts
        for _ in range(10000):
            n = int(rng.integers(o["min_objects"], o["max_objects"] + 1))
            cells = [CELLS[int(k)] for k in rng.choice(9, size=n, replace=False)]
            objs = [self._object(rng, c) for c in cells]
            if n > 1 and rng.random() < o["repeat_prob"]:
                k = int(rng.integers(2, n + 1))
                same_size = rng.random() < 0.7
                for m in objs[1:k]:
                    m.update(color=objs[0]["color"], shape=objs[0]["shape"])
                    if same_size:
                        m["size"] = objs[0]["size"]
            if not o["disjoint"] or _heldout(_scene_key(objs)) == (self.split != "train"):
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
            obj = {"color": str(_pick(rng, self.colors)), "shape": str(_pick(rng, self.shapes))}
            obj["size"] = str(_pick(rng, SIZES))
            direction = str(_pick(rng, o["directions"]))
            key = [obj["color"], obj["shape"], obj["size"], direction]
            if not o["disjoint"] or _heldout(key) == (self.split != "train"):
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


__all__ = [
    "BACKGROUND",
    "CELLS",
    "COLORS",
    "DEFAULT_COLORS",
    "DIRECTIONS",
    "EDITS",
    "PALETTE",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "TASKS",
    "Geometry",
    "ShapesDataset",
    "apply_edit",
    "caption_correct",
    "cell_rc",
    "count_correct",
    "default_xy",
    "describe",
    "edit_instruction",
    "geometry",
    "object_mask",
    "object_prf",
    "parse_caption",
    "parse_instruction",
    "placement_range",
    "relation_holds",
    "relations_of",
    "render_scene",
    "render_video",
    "satisfies",
    "scene_caption",
    "scene_matches",
    "spec_from_scene",
    "video_caption",
]
