"""Reading `shapes` text back: captions into specs (`parse_caption`), instructions into edits
(`parse_instruction`)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .captions import _ADD_VERBS, _MOVE_VERBS, _RECOLOR_VERBS, _REMOVE_VERBS, NUMBERS
from .world import CELLS, COLORS, SHAPES, _new_object

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


# the patterns that may start at a word, in the order of _REL_PATTERNS (longest first)
_REL_BY_FIRST: dict[str, list[tuple[tuple[str, ...], str]]] = {
    word: [(p, rel) for p, rel in _REL_PATTERNS if p[0] == word] for word in {p[0] for p, _ in _REL_PATTERNS}
}


def _parse_relation(toks: list[str], i: int):
    for pattern, rel in _REL_BY_FIRST.get(toks[i], ()) if i < len(toks) else ():
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
