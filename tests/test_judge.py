"""The `shapes` judge reads fresh renders back (>= 99%, also after uint8 rounding and mild noise)
and is wrong when the image is wrong."""

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from unimodal.data.shapes import PALETTE, ShapesDataset, parse_caption, render_scene, render_video
from unimodal.eval.shapes import (
    caption_metrics,
    judge,
    judge_video,
    scene_matches,
    t2i_metrics,
    to_rgb_uint8,
    video_correct,
)

N = 300
SIGMA = 8 / 255  # on the [0, 1] scale


def _noisy(a: np.ndarray, rng: np.random.Generator, kind: str):
    """uint8 image(s) -> clean uint8, or noisy (Gaussian, clipped) as uint8 or as float [-1, 1]
    channels-first torch (the layout a model produces)."""
    if kind == "clean":
        return a
    x = np.clip(a / 255.0 + rng.normal(0, SIGMA, a.shape), 0, 1)
    if kind == "noisy_uint8":
        return np.round(x * 255).astype(np.uint8)
    t = torch.from_numpy((x * 2 - 1).astype(np.float32))
    return t.permute(2, 0, 1) if t.dim() == 3 else t.permute(0, 3, 1, 2)


KINDS = ("clean", "noisy_uint8", "noisy_float")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("task", ["t2i", "scenes"])
def test_judge_accuracy_images(task, kind):
    """Single shapes (16x16) and scenes of 1-3 objects (32x32): every object exactly right."""
    ds = ShapesDataset(task, split="test", seed=2024, n=N)
    rng = np.random.default_rng(7)
    right = 0
    for i in range(N):
        doc = ds[i]
        j = judge(_noisy(doc.images[0].data, rng, kind))
        ok = scene_matches(j, doc.meta["scene"])
        if task == "t2i":
            o = doc.meta["scene"]["objects"][0]
            ok = ok and (j["color"], j["shape"], j["size"], j["position"]) == (
                o["color"],
                o["shape"],
                o["size"],
                o["cell"],
            )
        right += ok
    assert right / N >= 0.99, f"{task} {kind}: {right}/{N}"


@pytest.mark.parametrize("kind", ["clean", "noisy_uint8"])
def test_judge_accuracy_video(kind):
    ds = ShapesDataset("video", split="test", seed=2024, n=N)
    rng = np.random.default_rng(8)
    right = 0
    for i in range(N):
        doc = ds[i]
        frames = _noisy(doc.images[0].data, rng, kind if i % 2 or kind == "clean" else "noisy_float")
        j = judge_video(frames)
        o = doc.meta["object"]
        right += (
            video_correct(j, doc.meta["spec"])
            and j["direction"] == doc.meta["direction"]
            and (j["color"], j["shape"], j["size"]) == (o["color"], o["shape"], o["size"])
        )
    assert right / N >= 0.99, f"video {kind}: {right}/{N}"


def test_judge_inputs():
    scene = {"objects": [{"color": "red", "shape": "circle", "size": "large", "cell": "top left"}]}
    a = render_scene(scene, 16)
    for x in (a, PILImage.fromarray(a), torch.from_numpy(a).permute(2, 0, 1), a.transpose(2, 0, 1) / 127.5 - 1):
        assert judge(x)["objects"][0]["color"] == "red" and judge(x)["position"] == "top left"
    rgba = np.concatenate([a, np.full((16, 16, 1), 255, np.uint8)], -1)
    assert judge(rgba)["shape"] == "circle"
    assert to_rgb_uint8(np.zeros((16, 16))).shape == (16, 16, 3)
    with pytest.raises(ValueError):
        judge(np.zeros((16, 20, 3), np.uint8))
    blank = judge(np.zeros((32, 32, 3), np.uint8))
    assert blank["objects"] == [] and blank["count"] == 0 and "color" not in blank


def _scene():
    return {
        "objects": [
            {"color": "red", "shape": "circle", "size": "small", "cell": "top left"},
            {"color": "blue", "shape": "square", "size": "large", "cell": "center"},
            {"color": "green", "shape": "triangle", "size": "large", "cell": "bottom right"},
        ]
    }


def test_judge_wrong_when_image_wrong():
    scene = _scene()
    img = render_scene(scene, 32)
    j = judge(img)
    assert scene_matches(j, scene) and j["count"] == 3
    assert [1, "left_of", 2] in j["relations"] and [0, "above", 1] in j["relations"]
    # recolour the red circle's pixels yellow
    recoloured = img.copy()
    recoloured[(img == PALETTE["red"]).all(-1)] = PALETTE["yellow"]
    jr = judge(recoloured)
    assert jr["objects"][0]["color"] == "yellow" and not scene_matches(jr, scene)
    # each attribute changed in the scene -> the judge reads the change
    for key, value in (("shape", "triangle"), ("size", "small"), ("cell", "top right")):
        wrong = {"objects": [dict(o) for o in scene["objects"]]}
        wrong["objects"][1][key] = value
        jw = judge(render_scene(wrong, 32))
        assert not scene_matches(jw, scene) and scene_matches(jw, wrong)
    # a missing object, an extra one, specks of noise
    assert judge(render_scene(scene["objects"][:2], 32))["count"] == 2
    extra = {"objects": [*scene["objects"], {"color": "red", "shape": "circle", "size": "small", "cell": "left"}]}
    assert not scene_matches(judge(render_scene(extra, 32)), scene)
    speck = img.copy()
    speck[0, 31] = PALETTE["white"]
    assert scene_matches(judge(speck), scene) and judge(speck)["dropped"] == 1
    # heavy noise breaks it (the test can fail)
    rng = np.random.default_rng(0)
    noisy = np.clip(img + rng.normal(0, 120, img.shape), 0, 255).astype(np.uint8)
    assert not scene_matches(judge(noisy), scene)


def test_judge_video_wrong_when_clip_wrong():
    obj = {"color": "cyan", "shape": "triangle", "size": "small"}
    clip = render_video(obj, [[2, 5], [4, 5], [6, 5], [8, 5]], 16)
    j = judge_video(clip)
    assert j["direction"] == "right" and j["consistent"] and j["shape"] == "triangle"
    assert judge_video(clip[::-1])["direction"] == "left"
    assert not video_correct(judge_video(clip[::-1]), parse_caption("a cyan triangle moving right"))
    assert judge_video(np.stack([clip[0]] * 4))["direction"] == "none"
    assert judge_video(clip.transpose(0, 2, 1, 3))["direction"] == "down"
    jumpy = clip[[0, 2, 1, 3]]
    assert judge_video(jumpy)["direction"] == "right" and not judge_video(jumpy)["consistent"]
    recoloured = clip.copy()
    recoloured[2][(clip[2] == PALETTE["cyan"]).all(-1)] = PALETTE["red"]
    assert not judge_video(recoloured)["consistent"]
    empty = clip.copy()
    empty[1] = 0
    assert judge_video(empty)["objects"] == [] and judge_video(empty)["direction"] is None


def test_metrics_arithmetic():
    scene = _scene()
    specs = [
        parse_caption("a small red circle at the top left, a large blue square and a large green triangle"),
        parse_caption("a small red circle below a large blue square and a large green triangle"),
        parse_caption("two objects: a red circle and a blue square"),
        None,
    ]
    judged = [judge(render_scene(scene, 32))] * 4
    m = t2i_metrics(judged, specs)
    assert m["correct"] == 0.25 and m["count_accuracy"] == 0.5 and m["n"] == 4
    assert m["precision"] == pytest.approx((1 + 1 + 2 / 3 + 0) / 4) and m["recall"] == pytest.approx(3 / 4)
    c = caption_metrics(
        [
            "a large blue square to the right of a small red circle, and a large green triangle at the bottom right",
            "a large blue square to the left of a small red circle and a large green triangle",
            "a blue square, a red circle and a green triangle",
            "nonsense words",
        ],
        [scene] * 4,
    )
    assert c == {"exact": 0.25, "parsed": 0.75, "n": 4}
