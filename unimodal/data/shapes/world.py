"""The `shapes` world: its colours, shapes, sizes and named cells, the geometry of an image size,
objects as plain dicts and where they sit.

An object is `{"color", "shape", "size", "cell"}` (plus `xy`, its top-left pixel, when placed off
its cell's default spot); a scene is `{"objects": [...]}`. A spec object (what a caption states,
see `parsing`) has the same keys plus `motion`, each None when not stated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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


# -- objects as dicts -------------------------------------------------------------------------

_ATTRS = ("color", "shape", "size", "cell", "motion")


def _objects(x: Any) -> list[dict]:
    """The object list of a scene, a judged image, a spec or a plain list (None: no objects)."""
    if x is None:
        return []
    if isinstance(x, dict):
        return list(x.get("objects") or [])
    return list(x)


def _new_object(attrs: dict | None = None) -> dict:
    """A spec object: every attribute of `_ATTRS` None (not stated) unless given in `attrs`."""
    obj = dict.fromkeys(_ATTRS)
    obj.update(attrs or {})
    return obj


def _attr_match(spec_obj: dict, obj: dict) -> bool:
    """Whether `obj` has every attribute that `spec_obj` states."""
    return all(spec_obj.get(k) is None or spec_obj.get(k) == obj.get(k) for k in _ATTRS)


# -- placement --------------------------------------------------------------------------------


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


def _axis_ranges(obj: dict, geo: Geometry) -> list[tuple[int, int, int]]:
    """(grid line, lowest, highest top-left coordinate) of an object in its cell, along x then y."""
    r, c = cell_rc(obj["cell"])
    d = geo.extent(obj["size"])
    return [(k, *placement_range(k, d, geo)) for k in (c, r)]


def _clamp(v: int, lo: int, hi: int) -> int:
    return int(min(max(v, lo), hi))


def default_xy(obj: dict, geo: Geometry) -> tuple[int, int]:
    """Top-left pixel (x, y) of an object: centred in its cell as far as the range allows."""
    d = geo.extent(obj["size"])
    x, y = (
        _clamp(int(np.floor((2 * k + 1) * geo.image_size / 6 - d / 2 + 0.5)), lo, hi)
        for k, lo, hi in _axis_ranges(obj, geo)
    )
    return x, y


def _jittered_xy(obj: dict, geo: Geometry, jitter: int, rng: np.random.Generator) -> list[int]:
    """Top-left pixel [x, y] of an object shifted from `default_xy` by up to `jitter` pixels per
    axis (x drawn first), staying inside its cell's range."""
    ranges = _axis_ranges(obj, geo)
    return [
        _clamp(v + int(rng.integers(-jitter, jitter + 1)), lo, hi)
        for v, (_, lo, hi) in zip(default_xy(obj, geo), ranges, strict=True)
    ]


# -- sampling ---------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, seq: Sequence) -> Any:
    """One element of `seq`, drawn from `rng` (the draw every random choice in the world uses)."""
    return seq[int(rng.integers(len(seq)))]
