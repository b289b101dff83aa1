"""The `shapes` tasks: text->image, captioning, scenes, stories of edits and video, each judged
from pixels by `unimodal.eval.shapes.judge`.

Every task reads the first `samples` documents of the held-out `test` split of `ShapesDataset`
(dataset seed 0, the model's image size, the world options of the run's recipe when there is
one), so two models are compared on the same items; `seed` seeds the sampling noise only (row i
of the task uses seed + i). Scoring is split from generation: `score_*` take the images (or
captions) and the documents, so ground truth fed in scores 1.0 (tests check this).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ...data.shapes import ShapesDataset, caption_correct, parse_caption, scene_matches
from ...documents import Document, Image, Text
from ..shapes import attribute_prf, caption_metrics, judge, judge_video, t2i_metrics, video_correct
from .base import GREEDY, Skip, chunks, mean, need_rgb, need_text, shapes_options, task, wilson_interval

DATASET_SEED = 0
ATTRIBUTES = ("color", "shape", "size", "position")  # position: the object's cell
CAPTION_TOKENS = 64  # longest held-out caption: 32 tokens with the shipped tokenizer


def held_out(pipe, kind: str, n: int, **options: Any) -> tuple[list[Document], dict[str, Any]]:
    """The first n test documents of shapes task `kind` at the model's image size, and their record."""
    opts = {**shapes_options(pipe), **options}
    size = pipe.cfg.image_size
    if kind == "video":
        opts.setdefault("frames", pipe.cfg.frames)
    try:
        ds = ShapesDataset(kind, split="test", seed=DATASET_SEED, n=n, image_size=size, **opts)
    except (ValueError, TypeError) as e:
        raise Skip(f"shapes {kind} cannot be made for this model: {e}") from None
    record = {"data": f"shapes/{kind}", "split": "test", "dataset_seed": DATASET_SEED, "image_size": size}
    if opts:
        record["options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in opts.items()}
    return list(ds), record


def _seeds(seed: int, idx: range) -> list[int]:
    return [seed + i for i in idx]


def generate_images(pipe, prompts: Sequence[str], seed: int, num_steps, guidance, sampler) -> list[np.ndarray]:
    """text_to_image in batches; prompt i drawn with seed + i. uint8 arrays (images or clips)."""
    out: list[np.ndarray] = []
    for r in chunks(len(prompts)):
        images = pipe.text_to_image(
            [prompts[i] for i in r], num_steps=num_steps, guidance=guidance, seed=_seeds(seed, r), sampler=sampler
        )
        out += [np.asarray(im) for im in images]
    return out


def generate_captions(pipe, images: Sequence, seed: int) -> list[str]:
    """Greedy captions (the seed only matters for sampled decoding; recorded all the same)."""
    out: list[str] = []
    for r in chunks(len(images)):
        out += pipe.caption([images[i] for i in r], max_new_tokens=CAPTION_TOKENS, seed=_seeds(seed, r))
    return out


def _first_object(doc: Document) -> dict:
    o = doc.meta["scene"]["objects"][0]
    return {"color": o["color"], "shape": o["shape"], "size": o["size"], "position": o["cell"]}


# ------------------------------------------------------------------------------ single shapes


def score_t2i(images: Sequence, docs: Sequence[Document]) -> dict[str, Any]:
    """Single shapes: the judge must see exactly one object; accuracy per attribute (an image
    with no or several objects gets every attribute wrong) and all attributes right at once."""
    hits = defaultdict(list)
    for im, doc in zip(images, docs, strict=True):
        j, want = judge(im), _first_object(doc)
        one = j["count"] == 1
        right = {a: one and j[a] == want[a] for a in ATTRIBUTES}
        for a in ATTRIBUTES:
            hits[a].append(right[a])
        hits["all"].append(all(right.values()))
        hits["one_object"].append(one)
    return {
        "all_correct": mean(hits["all"]),
        "all_correct_ci95": wilson_interval(hits["all"]),
        "attributes": {a: mean(hits[a]) for a in ATTRIBUTES},
        "one_object": mean(hits["one_object"]),
        "n": len(docs),
    }


def score_caption(captions: Sequence[str], docs: Sequence[Document]) -> dict[str, Any]:
    """Single shapes: exact match (`caption_correct`: parses, names exactly the object with its
    colour, shape and size, every stated position true) and per-attribute accuracy of the one
    object `parse_caption` reads back (a caption naming no or several objects: all wrong)."""
    hits = defaultdict(list)
    for c, doc in zip(captions, docs, strict=True):
        spec, want = parse_caption(c), _first_object(doc)
        one = spec is not None and spec["count"] == 1 and len(spec["objects"]) == 1
        got = spec["objects"][0] if one else {}
        got = {**got, "position": got.get("cell")}
        for a in ATTRIBUTES:
            hits[a].append(one and got.get(a) == want[a])
    scenes = [d.meta["scene"] for d in docs]
    m = caption_metrics(captions, scenes)
    return {
        "exact": m["exact"],
        "exact_ci95": wilson_interval([caption_correct(c, sc) for c, sc in zip(captions, scenes, strict=True)]),
        "attributes": {a: mean(hits[a]) for a in ATTRIBUTES},
        "parsed": m["parsed"],
        "n": len(docs),
    }


@task("shapes-t2i", samples=64, description="single shapes: held-out captions -> image -> judge")
def shapes_t2i(pipe, samples, seed, num_steps, guidance, sampler):
    need_text(pipe, "shapes-t2i")
    need_rgb(pipe, "shapes-t2i")
    docs, record = held_out(pipe, "t2i", samples)
    images = generate_images(pipe, [d.meta["caption"] for d in docs], seed, num_steps, guidance, sampler)
    return {**score_t2i(images, docs), "record": record}


@task("shapes-caption", samples=64, description="single shapes: held-out image -> caption -> parse", generation=GREEDY)
def shapes_caption(pipe, samples, seed, num_steps, guidance, sampler):
    need_text(pipe, "shapes-caption")
    need_rgb(pipe, "shapes-caption")
    docs, record = held_out(pipe, "caption", samples)
    captions = generate_captions(pipe, [d.images[0].data for d in docs], seed)
    out = score_caption(captions, docs)
    out["examples"] = [{"reference": d.meta["caption"], "caption": c} for d, c in zip(docs[:4], captions, strict=False)]
    return {**out, "record": {**record, "decoding": "greedy", "max_new_tokens": CAPTION_TOKENS}}


# ------------------------------------------------------------------------------------- scenes


def _by_count(values: Sequence[bool], docs: Sequence[Document]) -> dict[str, float]:
    groups = defaultdict(list)
    for v, d in zip(values, docs, strict=True):
        groups[str(len(d.meta["scene"]["objects"]))].append(v)
    return {k: mean(groups[k]) for k in sorted(groups)}


def score_scenes_t2i(images: Sequence, docs: Sequence[Document]) -> dict[str, Any]:
    """Scenes: `correct` = the judged objects meet the caption's spec exactly (the stated number
    of objects, each with its stated attributes, every stated relation true); mean per-object
    precision and recall, also with the objects reduced to colour and one attribute (which one
    fails); count accuracy; `correct` by the scene's number of objects."""
    from ...data.shapes import satisfies

    judged = [judge(im) for im in images]
    specs = [d.meta["spec"] for d in docs]
    m = t2i_metrics(judged, specs)
    ok = [satisfies(j, s) for j, s in zip(judged, specs, strict=True)]
    return {
        "correct": m["correct"],
        "correct_ci95": wilson_interval(ok),
        "precision": m["precision"],
        "recall": m["recall"],
        "count_accuracy": m["count_accuracy"],
        "correct_by_objects": _by_count(ok, docs),
        "by_attribute": attribute_prf(judged, specs),
        "n": len(docs),
    }


def score_scenes_caption(captions: Sequence[str], docs: Sequence[Document]) -> dict[str, Any]:
    """Scenes: exact set match of objects and relations read back from the caption."""
    scenes = [d.meta["scene"] for d in docs]
    m = caption_metrics(captions, scenes)
    ok = [caption_correct(c, s) for c, s in zip(captions, scenes, strict=True)]
    return {
        "exact": m["exact"],
        "exact_ci95": wilson_interval(ok),
        "parsed": m["parsed"],
        "exact_by_objects": _by_count(ok, docs),
        "n": len(docs),
    }


@task("shapes-scenes-t2i", samples=256, description="scenes of 1-3 objects: caption -> image -> judged set of objects")
def shapes_scenes_t2i(pipe, samples, seed, num_steps, guidance, sampler):
    need_text(pipe, "shapes-scenes-t2i")
    need_rgb(pipe, "shapes-scenes-t2i", min_size=30)
    docs, record = held_out(pipe, "scenes", samples)
    images = generate_images(pipe, [d.meta["caption"] for d in docs], seed, num_steps, guidance, sampler)
    return {**score_scenes_t2i(images, docs), "record": record}


@task(
    "shapes-scenes-caption",
    samples=256,
    description="scenes of 1-3 objects: image -> caption -> exact set match",
    generation=GREEDY,
)
def shapes_scenes_caption(pipe, samples, seed, num_steps, guidance, sampler):
    need_text(pipe, "shapes-scenes-caption")
    need_rgb(pipe, "shapes-scenes-caption", min_size=30)
    docs, record = held_out(pipe, "scenes", samples)
    captions = generate_captions(pipe, [d.images[0].data for d in docs], seed)
    out = score_scenes_caption(captions, docs)
    out["examples"] = [{"reference": d.meta["caption"], "caption": c} for d, c in zip(docs[:4], captions, strict=False)]
    return {**out, "record": {**record, "decoding": "greedy", "max_new_tokens": CAPTION_TOKENS}}


# -------------------------------------------------------------------------------------- story

STORY_EDITS = 2


def story_prompt(doc: Document) -> tuple[Document, list[str]]:
    """The given part of a story (everything up to and including the first instruction: the
    first image, and its caption when the story has one) and the later instructions."""
    segs = doc.segments
    first_image = next(i for i, s in enumerate(segs) if isinstance(s, Image))
    given = Document(list(segs[: first_image + 2]), meta=dict(doc.meta))
    if not isinstance(segs[first_image + 1], Text):
        raise ValueError("a story has an instruction after its first image")
    return given, list(doc.meta["instructions"][1:])


def story_plan(tok, later: Sequence[str]) -> list[int]:
    """The tokens forced after the given part: `<boi>` (the model draws the edited image; `<eoi>`
    follows by itself), then each later instruction's ids and `<boi>` again, then `<eos>`."""
    plan = [tok.boi_id]
    for text in later:
        plan += [*tok.encode(text), tok.boi_id]
    return [*plan, tok.eos_id]


def generate_story_documents(pipe, docs: Sequence[Document], seed: int, num_steps, guidance, sampler):
    """Each story continued by the model from its given part (`story_prompt`) under the forced
    plan (`story_plan`): the returned documents hold the given segments, then the model's image
    after each instruction and the later instructions, its own drawings staying in context (the
    story is followed as a chain, never reset to the truth). Returns (given, continued) lists."""
    tok = pipe.tokenizer
    givens, outs = [], []
    for r in chunks(len(docs)):
        prompts, plans = [], []
        for i in r:
            given, later = story_prompt(docs[i])
            prompts.append(given)
            plans.append(story_plan(tok, later))
        pos = [0] * len(plans)

        def force(rows, logits, plans=plans, pos=pos):
            forced = torch.full_like(logits, float("-inf"))
            for q, row in enumerate(rows):
                forced[q, plans[row][min(pos[row], len(plans[row]) - 1)]] = 0.0
                pos[row] += 1
            return forced

        outs += pipe.generate(
            prompts,
            max_new_tokens=max(len(p) for p in plans),
            num_steps=num_steps,
            guidance=guidance,
            seed=_seeds(seed, r),
            sampler=sampler,
            max_images=max(p.count(tok.boi_id) for p in plans),
            logits_processor=force,
        )
        givens += prompts
    return givens, outs


def generate_story_images(pipe, docs: Sequence[Document], seed: int, num_steps, guidance, sampler) -> list[list]:
    """For each story, the images the model drew after each instruction (uint8 arrays)."""
    givens, outs = generate_story_documents(pipe, docs, seed, num_steps, guidance, sampler)
    return [
        [np.asarray(s.data) for s in out.segments[len(given.segments) :] if isinstance(s, Image)]
        for given, out in zip(givens, outs, strict=True)
    ]


def score_story(drawn: Sequence[Sequence], docs: Sequence[Document]) -> dict[str, Any]:
    """Each drawn image judged against the scene its edit should produce (`scene_matches`:
    the same objects, colour, shape, size and cell, as multisets): accuracy per edit (all edits,
    and by step and by kind of edit), of the final scene, and of whole stories."""
    per_edit, final, whole = [], [], []
    by_step, by_op = defaultdict(list), defaultdict(list)
    for images, doc in zip(drawn, docs, strict=True):
        scenes, edits = doc.meta["scenes"][1:], doc.meta["edits"]
        oks = [
            k < len(images) and scene_matches(judge(images[k]), scenes[k]) for k in range(len(scenes))
        ]  # a missing image (should not happen: the plan forces every one) is wrong
        per_edit += oks
        for k, (ok, e) in enumerate(zip(oks, edits, strict=True)):
            by_step[str(k + 1)].append(ok)
            by_op[e["op"]].append(ok)
        final.append(oks[-1])
        whole.append(all(oks))
    return {
        "final_accuracy": mean(final),
        "final_accuracy_ci95": wilson_interval(final),
        "edit_accuracy": mean(per_edit),
        "story_accuracy": mean(whole),
        "edit_accuracy_by_step": {k: mean(v) for k, v in sorted(by_step.items())},
        "edit_accuracy_by_op": {k: mean(v) for k, v in sorted(by_op.items())},
        "n": len(docs),
        "edits": len(per_edit),
    }


@task("shapes-story", samples=32, description="stories of two edits: first image + instruction -> edited image")
def shapes_story(pipe, samples, seed, num_steps, guidance, sampler):
    need_text(pipe, "shapes-story")
    need_rgb(pipe, "shapes-story", min_size=30)
    docs, record = held_out(pipe, "story", samples, min_edits=STORY_EDITS, max_edits=STORY_EDITS)
    drawn = generate_story_images(pipe, docs, seed, num_steps, guidance, sampler)
    record["protocol"] = "chain: <boi> forced after each instruction; the model's own images stay in context"
    return {**score_story(drawn, docs), "record": record}


# -------------------------------------------------------------------------------------- video


def score_video(clips: Sequence, docs: Sequence[Document]) -> dict[str, Any]:
    """`accuracy`: one consistent object with the caption's attributes moving the stated way
    (`video_correct`); direction and per-attribute accuracy (size only where the caption names
    it), and how often the clip shows one object moving monotonically (`consistent`)."""
    hits = defaultdict(list)
    for clip, doc in zip(clips, docs, strict=True):
        j, meta = judge_video(clip), doc.meta
        hits["correct"].append(video_correct(j, meta["spec"]))
        hits["direction"].append(j["direction"] == meta["direction"])
        hits["consistent"].append(bool(j["consistent"]))
        stated = meta["spec"]["objects"][0]
        for a in ("color", "shape", "size"):
            if stated.get(a) is not None:
                hits[a].append(j.get(a) == meta["object"][a])
    return {
        "accuracy": mean(hits["correct"]),
        "accuracy_ci95": wilson_interval(hits["correct"]),
        "direction_accuracy": mean(hits["direction"]),
        "attributes": {a: mean(hits[a]) for a in ("color", "shape", "size")},
        "consistent": mean(hits["consistent"]),
        "n": len(docs),
    }


@task("shapes-video", samples=32, description="clips from captions: the judged object moves as stated")
def shapes_video(pipe, samples, seed, num_steps, guidance, sampler):
    need_text(pipe, "shapes-video")
    need_rgb(pipe, "shapes-video", frames=None)
    docs, record = held_out(pipe, "video", samples)
    clips = generate_images(pipe, [d.meta["caption"] for d in docs], seed, num_steps, guidance, sampler)
    return {**score_video(clips, docs), "record": {**record, "frames": pipe.cfg.frames}}
