"""Edits of a `shapes` scene (the steps of a story): add, remove, move or recolour one object.

An edit is `{"op", "object", "to"}`: `object` names the object to add, or refers to the one to
change by its stated attributes; `to` is the target cell of a move or the colour of a recolour
(a move may also carry `xy`). Its text is written by `captions.edit_instruction` and read back
by `parsing.parse_instruction`.
"""

from __future__ import annotations

from collections.abc import Sequence

from .world import CELLS, PALETTE, _attr_match, _objects

EDITS: tuple[str, ...] = ("add", "remove", "move", "recolor")


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
