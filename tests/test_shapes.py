"""The built-in `shapes` world: determinism, well-formed documents, captions that read back,
stories whose edits do what they say, videos that move as stated."""

import hashlib
import json
import re

import numpy as np
import pytest

from unimodal.data.shapes import (
    CELLS,
    COLORS,
    DIRECTIONS,
    PALETTE,
    SHAPES,
    TASKS,
    ShapesDataset,
    apply_edit,
    caption_correct,
    count_correct,
    default_xy,
    geometry,
    object_mask,
    object_prf,
    parse_caption,
    parse_instruction,
    render_scene,
    satisfies,
    scene_matches,
)
from unimodal.documents import Document, Image, Text


def _same(a: Document, b: Document) -> bool:
    if len(a) != len(b) or a.meta != b.meta:
        return False
    for x, y in zip(a, b, strict=True):
        if type(x) is not type(y):
            return False
        if isinstance(x, Text) and x.text != y.text:
            return False
        if isinstance(x, Image) and not np.array_equal(x.data, y.data):
            return False
    return True


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_per_index(task):
    a, b = ShapesDataset(task, n=50, seed=3), ShapesDataset(task, n=50, seed=3)
    for i in (0, 7, 49):
        assert _same(a[i], b[i]) and _same(a[i], a[i])
    assert _same(a[-1], a[49])
    assert not all(_same(a[i], ShapesDataset(task, n=50, seed=4)[i]) for i in range(5))


@pytest.mark.parametrize("task", TASKS)
def test_train_and_test_streams_differ(task):
    train, test = ShapesDataset(task, "train", n=20), ShapesDataset(task, "test", n=20)
    same = sum(_same(train[i], test[i]) for i in range(20))
    texts_train = {train[i].texts[0].text for i in range(20)}
    texts_test = {test[i].texts[0].text for i in range(20)}
    assert same == 0 and texts_train != texts_test


def _layout(task: str) -> list[type]:
    return {"t2i": [Text, Image], "caption": [Image, Text], "scenes": [Text, Image], "video": [Text, Image]}[task]


@pytest.mark.parametrize("task", TASKS)
def test_documents_well_formed(task):
    ds = ShapesDataset(task, n=30)
    assert len(ds) == 30
    with pytest.raises(IndexError):
        ds[30]
    size = {"t2i": 16, "caption": 16, "video": 16}.get(task, 32)
    for i in range(30):
        doc = ds[i]
        assert isinstance(doc, Document) and doc.label is None
        json.dumps(doc.meta)  # plain JSON-able
        assert doc.meta["dataset"] == "shapes" and doc.meta["task"] == task and doc.meta["index"] == i
        kinds = [type(s) for s in doc]
        if task == "story":
            assert (
                kinds[0] is Image
                and kinds[1::2] == [Text] * (len(doc) // 2)
                and kinds[::2] == [Image] * (len(doc) // 2 + 1)
            )
            assert 1 <= len(doc.meta["edits"]) <= 3 and len(doc.meta["scenes"]) == len(doc.meta["edits"]) + 1
        else:
            assert kinds == _layout(task)
        for im in doc.images:
            a = im.data
            assert isinstance(a, np.ndarray) and a.dtype == np.uint8
            assert a.shape == ((4, size, size, 3) if task == "video" else (size, size, 3))
            t = im.to_tensor()
            assert t.min() >= -1 and t.max() <= 1
        for t in doc.texts:
            assert t.text and t.text == t.text.strip()
        if task in ("t2i", "caption", "scenes"):
            n = len(doc.meta["scene"]["objects"])
            assert (n == 1) if task != "scenes" else (1 <= n <= 3)
            cells = [o["cell"] for o in doc.meta["scene"]["objects"]]
            assert len(set(cells)) == len(cells)


def test_scene_default_and_options():
    ds = ShapesDataset()
    assert ds.task == "scenes" and ds.image_size == 32 and len(ds) == 10000
    counts = {len(ShapesDataset(n=300)[i].meta["scene"]["objects"]) for i in range(300)}
    assert counts == {1, 2, 3}
    img = ShapesDataset("scenes", n=5, order="image_first")[0]
    assert [type(s) for s in img] == [Image, Text]
    with pytest.raises(TypeError, match="unknown options"):
        ShapesDataset("t2i", frames=4)
    with pytest.raises(ValueError, match="image_size >= 30"):
        ShapesDataset("t2i", max_objects=2)
    with pytest.raises(ValueError, match="task"):
        ShapesDataset("nope")
    with pytest.raises(ValueError, match="split"):
        ShapesDataset(split="dev")
    wide = ShapesDataset("t2i", image_size=32, max_objects=2, colors=8, n=200)
    seen = {o["color"] for i in range(200) for o in wide[i].meta["scene"]["objects"]}
    assert seen == set(COLORS)
    assert {o["color"] for i in range(100) for o in ShapesDataset(n=100)[i].meta["scene"]["objects"]} <= set(COLORS[:6])


def test_object_weights_shift_the_counts_and_leave_the_default_stream_alone():
    """`object_weights` draws object counts at the stated odds (here 1:0:3, so no two-object
    scenes and three times as many of three as of one); without it the documents are those of
    before the option existed (a fixed hash of the first scenes), and bad weights are refused."""
    ds = ShapesDataset(n=400, object_weights=[1, 0, 3])
    counts = np.bincount([len(ds[i].meta["scene"]["objects"]) for i in range(400)], minlength=4)
    assert counts[0] == counts[2] == 0 and 270 < counts[3] < 330 and counts[1] + counts[3] == 400
    scenes = [ShapesDataset(n=20)[i].meta["scene"]["objects"] for i in range(20)]
    digest = hashlib.sha256(json.dumps(scenes, sort_keys=True, default=str).encode()).hexdigest()
    assert digest[:16] == "b6ad952f995809f7"  # the first 20 default scenes, as made at fe38174
    for bad in ([1, 1], [1, -1, 1], [0, 0, 0], [1, float("nan"), 1], "abc", 3):
        with pytest.raises(ValueError, match="object_weights"):
            ShapesDataset(object_weights=bad)


def test_colours_well_separated():
    rgb = np.array(list(PALETTE.values()), float)
    d = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
    assert d[~np.eye(len(rgb), dtype=bool)].min() >= 100 and np.linalg.norm(rgb, axis=1).min() >= 180


def test_geometry_objects_fit_their_cells():
    """Every object lands in its named cell (by box centre) at every image size, and objects of a
    scene never touch."""
    for s in range(16, 65):
        geo = geometry(s)
        for size in ("small", "large"):
            d = geo.extent(size)
            for k, cell in enumerate(CELLS):
                x, y = default_xy({"cell": cell, "size": size}, geo)
                assert 0 < x and x + d < s and 0 < y and y + d < s
                assert ((2 * y + d) * 3 // (2 * s), (2 * x + d) * 3 // (2 * s)) == divmod(k, 3)
        if geo.scene:
            full = render_scene([{"color": "red", "shape": "square", "size": "large", "cell": c} for c in CELLS], s)
            assert full.any(-1).sum() == 9 * geo.large**2  # nine separate squares, none clipped
            cols = full.any(-1).any(0)
            assert (np.diff(cols.astype(int)) == 1).sum() + cols[0] == 3  # three separate column bands
    assert geometry(32).small == 5 and geometry(32).large == 8 and geometry(16).large == 8
    with pytest.raises(ValueError):
        geometry(12)


def test_shape_masks_distinct():
    for d in range(5, 20):
        fills = {s: object_mask(s, d).mean() for s in SHAPES}
        assert fills["square"] == 1.0 and 0.74 < fills["circle"] < 0.9 and 0.49 < fills["triangle"] < 0.57
        for s in SHAPES:
            m = object_mask(s, d)
            assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any()  # box is exactly d x d


def _perturb(scene: dict, rng: np.random.Generator) -> tuple[dict, str]:
    objs = [dict(o) for o in scene["objects"]]
    k = int(rng.integers(len(objs)))
    what = ("color", "shape", "size", "cell", "drop", "add")[int(rng.integers(6))]
    o = objs[k]
    if what == "color":
        o["color"] = next(c for c in COLORS if c != o["color"])
    elif what == "shape":
        o["shape"] = next(s for s in SHAPES if s != o["shape"])
    elif what == "size":
        o["size"] = "large" if o["size"] == "small" else "small"
    elif what == "cell":
        o["cell"] = next(c for c in CELLS if c not in {m["cell"] for m in objs})
    elif what == "drop" and len(objs) > 1:
        objs.pop(k)
    else:
        what = "add"
        objs.append({**o, "cell": next(c for c in CELLS if c not in {m["cell"] for m in objs})})
    return {"objects": objs}, what


@pytest.mark.parametrize("task,n", [("scenes", 600), ("t2i", 200)])
def test_caption_round_trip(task, n):
    """parse(caption(scene)) is satisfied by the scene, and not by a perturbed scene."""
    ds = ShapesDataset(task, n=n, seed=1)
    rng = np.random.default_rng(0)
    styles = set()
    for i in range(n):
        m = ds[i].meta
        scene, spec = m["scene"], parse_caption(m["caption"])
        styles.add(m["style"])
        assert spec is not None and spec == m["spec"], m["caption"]
        assert satisfies(scene, spec) and caption_correct(m["caption"], scene), m["caption"]
        assert object_prf(scene, spec) == (1.0, 1.0) and count_correct(scene, spec)
        assert all(o["color"] and o["shape"] and o["size"] for o in spec["objects"])
        bad, what = _perturb(scene, rng)
        states_cells = all(o["cell"] for o in spec["objects"])
        if what != "cell" or states_cells:
            assert not satisfies(bad, spec), (m["caption"], what)
            assert not caption_correct(m["caption"], bad)
    assert styles == ({"positions", "counts", "relations"} if task == "scenes" else {"positions", "counts"})


def test_caption_templates_vary():
    """Many distinct sentence frames once the attribute words are masked; objects in any order."""
    ds = ShapesDataset("scenes", n=400)
    words = "|".join([*COLORS, *SHAPES, "small", "large"])
    frames, firsts = set(), set()
    for i in range(400):
        m = ds[i].meta
        frames.add(re.sub(rf"\b({words})s?\b", "X", m["caption"]))
        if len(m["scene"]["objects"]) == 3:
            spec = m["spec"]
            first = spec["objects"][0]
            firsts.add(
                next(
                    k
                    for k, o in enumerate(m["scene"]["objects"])
                    if all(o[a] == first[a] for a in ("color", "shape", "size"))
                )
            )
    assert len(frames) >= 60
    assert firsts == {0, 1, 2}
    captions = " ".join(ds[i].meta["caption"] for i in range(400))
    for phrase in ("to the left of", "above", "which is", "two ", "objects:", "corner", "there is"):
        assert phrase in captions, phrase


def test_parse_caption_hand_written():
    spec = parse_caption("three green triangles")
    assert spec["count"] == 3 and all(o["color"] == "green" and o["size"] is None for o in spec["objects"])
    spec = parse_caption("a small red circle to the left of a large blue square")
    assert spec["relations"] == [[0, "left_of", 1]] and spec["objects"][1]["size"] == "large"
    spec = parse_caption("two small red circles above a large blue square")
    assert spec["relations"] == [[0, "above", 2], [1, "above", 2]]
    spec = parse_caption("In this picture there is a big blue square in the top-left corner of the image.")
    assert spec["objects"] == [
        {"color": "blue", "shape": "square", "size": "large", "cell": "top left", "motion": None}
    ]
    assert parse_caption("Three objects: a red circle, a blue square and a green triangle.")["count"] == 3
    for bad in ("", "a red circles", "a red circle blah", "to the left of a square", "the", "at the top", None, 3):
        assert parse_caption(bad) is None
    assert parse_caption("a red circle blah", strict=False)["objects"][0]["shape"] == "circle"
    assert not satisfies({"objects": []}, None) and not caption_correct("gibberish", {"objects": []})


def test_satisfies_relations_and_counts():
    scene = {
        "objects": [
            {"color": "red", "shape": "circle", "size": "small", "cell": "left"},
            {"color": "blue", "shape": "square", "size": "large", "cell": "center"},
        ]
    }
    assert satisfies(scene, parse_caption("a small red circle to the left of a large blue square"))
    assert satisfies(scene, parse_caption("a large blue square right of a small red circle"))
    assert not satisfies(scene, parse_caption("a small red circle to the right of a large blue square"))
    assert not satisfies(scene, parse_caption("a small red circle above a large blue square"))
    assert not satisfies(scene, parse_caption("a small red circle"))  # captions are exhaustive
    assert satisfies(scene, parse_caption("two objects: a red circle and a square"))
    three = parse_caption("three green triangles")
    assert object_prf(scene, three) == (0.0, 0.0) and not count_correct(scene, three)
    p, r = object_prf(scene, parse_caption("a small red circle, a large blue square and a small green triangle"))
    assert (p, r) == (1.0, 2 / 3)


def test_story_edits_do_what_they_say():
    ds = ShapesDataset("story", n=300, seed=2)
    ops, lengths = set(), set()
    for i in range(300):
        m = ds[i].meta
        lengths.add(len(m["edits"]))
        for k, (text, edit) in enumerate(zip(m["instructions"], m["edits"], strict=True)):
            before, after = m["scenes"][k]["objects"], m["scenes"][k + 1]["objects"]
            ops.add(edit["op"])
            parsed = parse_instruction(text)
            assert parsed is not None and parsed["op"] == edit["op"], text
            assert scene_matches(apply_edit(m["scenes"][k], parsed), m["scenes"][k + 1]), text
            if edit["op"] == "add":
                assert len(after) == len(before) + 1 and after[:-1] == before
            elif edit["op"] == "remove":
                assert len(after) == len(before) - 1 and all(o in before for o in after)
            else:
                changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
                assert len(changed) == 1, text
                (a, b), key = changed[0], "cell" if edit["op"] == "move" else "color"
                assert a[key] != b[key] == edit["to"] and {k: v for k, v in a.items() if k != key} == {
                    k: v for k, v in b.items() if k != key
                }
        images = [im.data for im in ds[i].images]
        assert all(not np.array_equal(x, y) for x, y in zip(images, images[1:], strict=False))
        assert all(np.array_equal(im, render_scene(s, 32)) for im, s in zip(images, m["scenes"], strict=True))
    assert ops == {"add", "remove", "move", "recolor"} and lengths == {1, 2, 3}
    for bad in ("move it", "paint the red circle", "", "add two red circles", "remove the circle please"):
        assert parse_instruction(bad) is None
    two = {"objects": [{"color": "red", "shape": "circle", "size": "small", "cell": c} for c in ("left", "right")]}
    assert apply_edit(two, parse_instruction("remove the small red circle")) is None  # ambiguous reference
    assert apply_edit(two, parse_instruction("move the small red circle on the left to the right")) is None  # taken


def test_video_moves_as_captioned():
    ds = ShapesDataset("video", n=200)
    dirs = set()
    for i in range(200):
        doc = ds[i]
        m, frames = doc.meta, doc.images[0].data
        spec = parse_caption(m["caption"])
        assert spec["objects"][0]["motion"] == m["direction"] and spec["count"] == 1
        dirs.add(m["direction"])
        assert np.array_equal(frames[0], render_scene([{**m["object"], "xy": m["positions"][0]}], 16))
        pos = np.array(m["positions"])
        delta = np.diff(pos, axis=0)
        expect = {"right": (2, 0), "left": (-2, 0), "down": (0, 2), "up": (0, -2)}[m["direction"]]
        assert (delta == expect).all()
        assert all(not np.array_equal(a, b) for a, b in zip(frames, frames[1:], strict=False))
    assert dirs == set(DIRECTIONS)
    long = ShapesDataset("video", n=3, frames=6, image_size=32)[0].images[0].data
    assert long.shape == (6, 32, 32, 3)
    with pytest.raises(ValueError):
        ShapesDataset("video", frames=8, step=4)


def test_disjoint_split_holds_out_scenes():
    key = lambda m: sorted((o["color"], o["shape"], o["size"], o["cell"]) for o in m["scene"]["objects"])  # noqa: E731
    train = {str(key(d.meta)) for d in ShapesDataset("t2i", "train", n=400, disjoint=True)}
    test = {str(key(d.meta)) for d in ShapesDataset("t2i", "test", n=100, disjoint=True)}
    assert train and test and not train & test


def test_jitter_keeps_cells():
    ds = ShapesDataset("scenes", n=100, jitter=2)
    moved = 0
    geo = geometry(32)
    for i in range(100):
        for o in ds[i].meta["scene"]["objects"]:
            moved += list(o["xy"]) != list(default_xy(o, geo))
            x, y = o["xy"]
            d = geo.extent(o["size"])
            assert ((2 * y + d) * 3 // 64) * 3 + (2 * x + d) * 3 // 64 == CELLS.index(o["cell"])
    assert moved > 20
