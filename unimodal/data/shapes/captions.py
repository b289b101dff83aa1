"""Text written from `shapes` scenes: captions of scenes and clips, and edit instructions.

Every phrase is drawn from the generator passed in, so a caption is a pure function of the
scene and the random stream; `parsing` reads all of them back.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from .edits import EDITS
from .world import RELATIONS, _objects, _pick, cell_rc, describe, relation_holds

NUMBERS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


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


# -- edit instructions ----------------------------------------------------------------------

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
