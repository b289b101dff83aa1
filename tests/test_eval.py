"""Evaluation: scorers give 1.0 on ground truth and the right fractions on hand-made cases, the
digits judge and diversity measure, text perplexity against an independent computation, the
pixel probe, and `unimodal eval` end to end on a tiny random model."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from unimodal import Document, ModelConfig, Text, UnifiedModel
from unimodal.cli import main
from unimodal.data.digits import DigitsDataset
from unimodal.data.shapes import ShapesDataset, parse_caption, render_scene
from unimodal.eval import shapes as judging
from unimodal.eval.tasks import TASK_NAMES, TASKS, run_tasks
from unimodal.eval.tasks import base as B
from unimodal.eval.tasks import digits as D
from unimodal.eval.tasks import likelihood as L
from unimodal.eval.tasks import probe as P
from unimodal.eval.tasks import shapes as S
from unimodal.generation import Engine
from unimodal.pipeline import Pipeline
from unimodal.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load(ROOT / "tokenizers_cfg" / "shapes")


def random_pipe(tok, path=None, **kw) -> Pipeline:
    cfg = ModelConfig.from_preset("micro", vocab_size=tok.vocab_size if tok else 0, **kw)
    model = UnifiedModel(cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # random weights everywhere (zero-init heads would make every output alike)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    model.eval()
    if path is not None:
        model.save_pretrained(path, tokenizer=tok)
    return Pipeline(model, tok, num_steps=2)


def _docs(task: str, n: int, **kw):
    return list(ShapesDataset(task, split="test", seed=0, n=n, **kw))


# ------------------------------------------------------------------- ground truth scores 1.0


def test_ground_truth_scores_one():
    t2i = _docs("t2i", 40)
    m = S.score_t2i([d.images[0].data for d in t2i], t2i)
    assert m["all_correct"] == 1.0 and set(m["attributes"].values()) == {1.0} and m["n"] == 40
    cap = _docs("caption", 40)
    m = S.score_caption([d.meta["caption"] for d in cap], cap)
    assert m["exact"] == 1.0 and m["parsed"] == 1.0 and set(m["attributes"].values()) == {1.0}

    scenes = _docs("scenes", 60)
    m = S.score_scenes_t2i([d.images[0].data for d in scenes], scenes)
    assert (m["correct"], m["precision"], m["recall"], m["count_accuracy"]) == (1.0, 1.0, 1.0, 1.0)
    assert set(m["correct_by_objects"]) == {"1", "2", "3"}
    m = S.score_scenes_caption([d.meta["caption"] for d in scenes], scenes)
    assert m["exact"] == 1.0 and m["parsed"] == 1.0

    stories = _docs("story", 20, min_edits=2, max_edits=2)
    drawn = [[s.data for s in d.segments[2::2]] for d in stories]
    m = S.score_story(drawn, stories)
    assert (m["final_accuracy"], m["edit_accuracy"], m["story_accuracy"], m["edits"]) == (1.0, 1.0, 1.0, 40)
    assert set(m["edit_accuracy_by_step"]) == {"1", "2"}

    clips = _docs("video", 30)
    m = S.score_video([d.images[0].data for d in clips], clips)
    assert m["accuracy"] == 1.0 and m["direction_accuracy"] == 1.0 and m["consistent"] == 1.0


def test_wrong_answers_score_low():
    t2i = _docs("t2i", 40)
    shifted = [d.images[0].data for d in t2i[1:] + t2i[:1]]  # every image belongs to another caption
    assert S.score_t2i(shifted, t2i)["all_correct"] < 0.2
    stories = _docs("story", 20, min_edits=2, max_edits=2)
    unchanged = [[d.segments[0].data] * 2 for d in stories]  # ignores the instructions
    m = S.score_story(unchanged, stories)
    assert m["final_accuracy"] < 0.2 and m["edit_accuracy"] < 0.2
    clips = _docs("video", 30)
    reversed_clips = [d.images[0].data[::-1] for d in clips]
    m = S.score_video(reversed_clips, clips)
    assert m["direction_accuracy"] == 0.0 and m["accuracy"] == 0.0 and m["attributes"]["color"] == 1.0


def _scene_doc(caption: str, objects: list[dict]) -> Document:
    return Document(
        [Text(caption)], meta={"caption": caption, "spec": parse_caption(caption), "scene": {"objects": objects}}
    )


def _obj(color, shape, size, cell):
    return {"color": color, "shape": shape, "size": size, "cell": cell}


def test_scene_precision_recall_count_by_hand():
    two = "a small red circle at the top left and a large blue square at the bottom right"
    right = [_obj("red", "circle", "small", "top left"), _obj("blue", "square", "large", "bottom right")]
    # drawn: the circle right, the square green instead of blue, and an extra triangle
    drawn = [right[0], _obj("green", "square", "large", "bottom right"), _obj("yellow", "triangle", "small", "center")]
    rel = "a small red circle to the left of a large blue square"
    swapped = [_obj("red", "circle", "small", "right"), _obj("blue", "square", "large", "left")]
    docs = [_scene_doc(two, right), _scene_doc(two, right), _scene_doc(rel, swapped)]
    images = [render_scene(right, 32), render_scene(drawn, 32), render_scene(swapped, 32)]
    m = S.score_scenes_t2i(images, docs)
    # sample 1 perfect; sample 2: 1 of 3 drawn objects wanted (P 1/3), 1 of 2 wanted drawn (R 1/2), 3 != 2;
    # sample 3: both objects right but the relation false: P = R = 1, count right, not correct
    assert m["correct"] == pytest.approx(1 / 3)
    assert m["precision"] == pytest.approx((1 + 1 / 3 + 1) / 3)
    assert m["recall"] == pytest.approx((1 + 1 / 2 + 1) / 3)
    assert m["count_accuracy"] == pytest.approx(2 / 3)
    assert m["correct_ci95"] == B.wilson_interval([True, False, False])
    # by attribute: the green square has the right shape, size and cell but not the colour, so it
    # never counts; the third caption states a relation, no cells, so its objects count everywhere
    by = m["by_attribute"]
    for view in judging.ATTRIBUTE_VIEWS:
        assert by[view]["precision"] == pytest.approx((1 + 1 / 3 + 1) / 3)
        assert by[view]["recall"] == pytest.approx((1 + 1 / 2 + 1) / 3)
    # a red circle asked at the top left, drawn large at the bottom right: colour and shape right
    asked = _scene_doc("a small red circle at the top left", [right[0]])
    drawn = judging.judge(render_scene([_obj("red", "circle", "large", "bottom right")], 32))
    by = judging.attribute_prf([drawn], [asked.meta["spec"]])
    assert by["color"] == by["color+shape"] == {"precision": 1.0, "recall": 1.0}
    assert by["color+size"] == by["color+cell"] == {"precision": 0.0, "recall": 0.0}


@pytest.mark.parametrize("k, n", [(0, 5), (5, 5), (6, 64), (10, 64), (17, 256), (128, 256), (1, 1)])
def test_wilson_interval_matches_scipy(k, n):
    from scipy.stats import binomtest

    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = B.wilson_interval([True] * k + [False] * (n - k))
    assert low == pytest.approx(ref.low, abs=1e-4) and high == pytest.approx(ref.high, abs=1e-4)
    assert low <= k / n <= high


def test_wilson_interval_of_no_samples_is_everything():
    assert B.wilson_interval([]) == [0.0, 1.0]


def test_single_shape_attributes_by_hand():
    doc = _docs("t2i", 1)[0]
    o = doc.meta["scene"]["objects"][0]
    other = next(c for c in ("red", "green", "blue") if c != o["color"])
    image = render_scene([{**o, "color": other}], 16)
    m = S.score_t2i([image], [doc])
    assert m["all_correct"] == 0.0
    assert m["attributes"] == {"color": 0.0, "shape": 1.0, "size": 1.0, "position": 1.0}
    m = S.score_t2i([np.zeros_like(image)], [doc])  # nothing drawn: every attribute wrong
    assert m["attributes"] == dict.fromkeys(S.ATTRIBUTES, 0.0) and m["one_object"] == 0.0

    cap = _docs("caption", 1)[0]
    c = cap.meta["scene"]["objects"][0]
    size = "small" if c["size"] == "large" else "large"
    wrong_size = f"a {size} {c['color']} {c['shape']} in the {c['cell']}"
    captions = [wrong_size, "two red circles", "gibberish words"]
    m = S.score_caption(captions, [cap] * 3)
    assert m["exact"] == 0.0 and m["parsed"] == pytest.approx(2 / 3)
    assert m["attributes"] == {"color": 1 / 3, "shape": 1 / 3, "size": 0.0, "position": 1 / 3}


# -------------------------------------------------------------------------------------- digits


def test_digits_classifier_on_real_test_split():
    x, y = DigitsDataset("test").arrays()
    assert (D.classify(x) == y).mean() >= 0.9
    assert D.classifier_test_accuracy() >= 0.9
    m = D.score_digits(x[:50], y[:50])
    assert m["accuracy"] >= 0.9 and m["n"] == 50


def test_diversity_real_vs_collapsed():
    x, y = DigitsDataset("train").arrays()  # real digits the measure has not seen (it compares to test)
    idx = np.concatenate([np.flatnonzero(y == c)[:10] for c in range(10)])
    real, labels = x[idx], y[idx]
    collapsed = np.stack([x[np.flatnonzero(y == c)[0]] for c in labels])  # one image per class, copied
    r, c = D.diversity(real, labels), D.diversity(collapsed, labels)
    assert r["diversity"] > 0.7 and c["diversity"] == 0.0
    assert r["coverage"] > 0.85 and c["coverage"] < r["coverage"] - 0.3


# ------------------------------------------------------------------------------- text and probe


def test_text_ppl_equals_independent_cross_entropy(tok):
    pipe = random_pipe(tok, image_size=16, patch_size=4, block_size=2)
    res = TASKS["text-ppl"].run(pipe, samples=6)
    captions, _ = L.heldout_captions(pipe, 6)
    nll, count = 0.0, 0
    with torch.no_grad():  # one token at a time through the KV cache: another path than the full forward
        for c in captions:
            ids = [tok.bos_id, *tok.encode(c), tok.eos_id]
            eng = Engine(pipe.model, 1, len(ids) + 2)
            for a, b in zip(ids[:-1], ids[1:], strict=True):
                logits = eng.text([0], [[a]])[0]
                nll -= torch.log_softmax(logits.float(), -1)[b].item()
                count += 1
    m = res["metrics"]
    assert m["tokens"] == count and m["n"] == 6
    assert m["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-3)
    assert res["record"]["data"] == "shapes/t2i" and res["record"]["samples"] == 6


def test_pixel_probe_beats_chance():
    tr, ytr, te, yte = P.shapes_probe_data(200, 100, 16)
    table = P.probe_table({"pixels": P.pixels(tr)}, {"pixels": P.pixels(te)}, ytr, yte)
    for a in ("color", "shape", "size", "position"):
        assert table["pixels"][a] >= table["chance"][a] + 0.3, (a, table)


# ----------------------------------------------------------------------------------- the tasks


def test_story_generation_follows_the_plan(tok):
    pipe = random_pipe(tok, image_size=32, patch_size=8, block_size=2)
    docs = _docs("story", 2, min_edits=2, max_edits=2)
    given, later = S.story_prompt(docs[0])
    assert [type(s).__name__ for s in given.segments] == ["Image", "Text"] and len(later) == 1
    assert S.story_plan(tok, later) == [tok.boi_id, *tok.encode(later[0]), tok.boi_id, tok.eos_id]
    givens, outs = S.generate_story_documents(pipe, docs, 0, 2, None, None)
    for doc, out in zip(docs, outs, strict=True):
        assert [type(s).__name__ for s in out.segments] == ["Image", "Text", "Image", "Text", "Image"]
        assert out.segments[3].text == doc.meta["instructions"][1]
        assert np.asarray(out.segments[4].data).shape == (32, 32, 3)
    res = TASKS["shapes-story"].run(pipe, samples=2, seed=5, num_steps=2)
    assert res["metrics"]["edits"] == 4 and res["record"]["seed"] == 5


def test_tasks_skip_what_does_not_fit(tok):
    grey = random_pipe(None, image_size=8, channels=1, num_classes=10)
    report = run_tasks(grey, samples=10, num_steps=2)
    assert list(report["tasks"]) == list(TASK_NAMES)
    for name in ("shapes-t2i", "shapes-caption", "shapes-scenes-t2i", "shapes-story", "shapes-video", "text-ppl"):
        r = report["tasks"][name]
        assert "skipped" in r and r["skipped"] and r["record"]["task"] == name, r
    assert not any("error" in r for r in report["tasks"].values())
    d = report["tasks"]["digits"]
    assert d["record"]["mode"] == "class_to_image" and d["metrics"]["n"] == 10 and 0 <= d["metrics"]["accuracy"] <= 1
    p = report["tasks"]["probe"]["metrics"]
    assert set(p) >= {"pixels", "chance", "layer1", "layer2", "embed_best"} and p["pixels"]["digit"] > 0.5

    class VAECodec:  # stands in for a latent model's autoencoder
        pass

    latent = random_pipe(tok, image_size=16, patch_size=4, block_size=2)
    latent.codec = VAECodec()
    for name in ("shapes-t2i", "probe"):
        assert "latents" in TASKS[name].run(latent, samples=2)["skipped"]


def test_cli_end_to_end(tok, tmp_path, capsys):
    model = tmp_path / "model"
    random_pipe(tok, model, image_size=16, patch_size=4, block_size=2)
    out = tmp_path / "res" / "eval.json"
    args = ["eval", str(model), "--task", "shapes-t2i", "shapes-caption", "--task", "text-ppl"]  # both forms
    args += ["--task", "digits", "--samples", "4", "--steps", "2", "--guidance", "2", "--seed", "7", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "shapes-t2i" in printed and "all_correct" in printed and "skipped" in printed
    report = json.loads(out.read_text())
    assert list(report["tasks"]) == ["shapes-t2i", "shapes-caption", "text-ppl", "digits"]
    for name in ("shapes-t2i", "shapes-caption", "text-ppl"):
        r = report["tasks"][name]
        rec = r["record"]
        assert rec["model"] == str(model) and rec["task"] == name
        assert (rec["sampler"], rec["steps"], rec["guidance"], rec["seed"], rec["samples"]) == ("euler", 2, 2.0, 7, 4)
        assert rec["split"] == "test" and r["metrics"]["n"] == 4
    t2i = report["tasks"]["shapes-t2i"]["metrics"]
    assert 0 <= t2i["all_correct"] <= 1 and set(t2i["attributes"]) == {"color", "shape", "size", "position"}
    assert report["tasks"]["text-ppl"]["metrics"]["perplexity"] > 1
    assert "8x8 grey" in report["tasks"]["digits"]["skipped"]

    assert main(["eval", str(model), "--task", "val-loss", "--samples", "4"]) == 0  # default --out
    res = json.loads((model / "eval.json").read_text())["tasks"]["val-loss"]
    assert res["metrics"]["documents"] == 4 and res["metrics"]["image_loss"] > 0 and res["metrics"]["text_loss"] > 0

    assert main(["eval", str(model), "--sampler", "ddpm", "--task", "shapes-t2i"]) == 2  # an ε-sampler, flow model
    assert main(["eval", str(tmp_path / "nothing")]) == 2


def test_cli_sampler_options_and_candidates_are_used_and_recorded(tok, tmp_path, capsys):
    model = tmp_path / "model"
    random_pipe(tok, model, image_size=16, patch_size=4, block_size=2)
    common = ["eval", str(model), "--task", "shapes-t2i", "--samples", "2", "--steps", "3"]
    assert main([*common, "--sampler-option", "shift=3", "--out", str(tmp_path / "a.json")]) == 0
    assert "sampler euler shift=3, 3 steps" in capsys.readouterr().out
    rec = json.loads((tmp_path / "a.json").read_text())["tasks"]["shapes-t2i"]["record"]
    assert rec["sampler_options"] == {"shift": 3}
    assert main([*common, "--out", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["tasks"]["shapes-t2i"]["record"]["sampler_options"] == {}
    # the option reaches the sampler: the shifted schedule draws different images from the same seeds
    pipe = Pipeline.from_pretrained(model, num_steps=3)
    plain = pipe.text_to_image(["a small red circle at the top left"], seed=[0])[0]
    pipe.sampler_options = {"shift": 3}
    shifted = pipe.text_to_image(["a small red circle at the top left"], seed=[0])[0]
    assert not np.array_equal(np.asarray(plain), np.asarray(shifted))

    assert main([*common, "--candidates", "2", "--out", str(tmp_path / "c.json")]) == 0
    assert "best of 2 by caption likelihood" in capsys.readouterr().out
    rec = json.loads((tmp_path / "c.json").read_text())["tasks"]["shapes-t2i"]["record"]
    assert rec["candidates"] == 2 and rec["sampler_options"] == {}

    assert main([*common, "--sampler-option", "nosuch=1"]) == 2
    assert "unknown option(s) ['nosuch']" in capsys.readouterr().err
    assert main([*common, "--sampler-option", "shift"]) == 2
    assert "'shift' must look like key=value" in capsys.readouterr().err
