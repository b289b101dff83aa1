"""Scores of the `shapes` world: whether a judged image (or a scene) meets a caption's spec.

`unimodal.eval.shapes` judges images into the same object dicts and aggregates these scores.
"""

from __future__ import annotations

from collections.abc import Sequence

from .parsing import parse_caption
from .world import _ATTRS, _attr_match, _new_object, _objects, relation_holds


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
