"""Documents from files the tests write: image folders, caption tables, interleaved lists, videos;
image conversion of every mode; every bad-input case under both policies."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image as PILImage

from unimodal.data import errors as E
from unimodal.data.convert import ImageConversion
from unimodal.data.errors import BadRecord, BadValue, RecordPolicy
from unimodal.data.formats import DataSource, load_documents
from unimodal.documents import Image, Text

# -- helpers -------------------------------------------------------------------------------------


def pixels(seed: int, h: int = 8, w: int = 8, c: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def encode(a: np.ndarray | PILImage.Image, fmt: str = "PNG") -> bytes:
    im = a if isinstance(a, PILImage.Image) else PILImage.fromarray(a)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path: Path, columns: dict) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def load(tmp_path: Path, fmt: str, path: Path, **kw) -> list:
    return list(load_documents(DataSource(fmt, path=str(path), cache_dir=str(tmp_path / "hf"), **kw)))


def as_tuple(doc) -> tuple:
    """A comparable form of a Document (segments, label, meta)."""
    segs = tuple(("t", s.text) if isinstance(s, Text) else ("i", s.data.shape, s.data.tobytes()) for s in doc.segments)
    return segs, doc.label, tuple(sorted(doc.meta.items()))


# -- writers for each format (each returns (DataSource kwargs, expected docs as (texts, arrays))) ----


def make_imagefolder(root: Path) -> dict:
    for c, cls in enumerate(["cat", "dog"]):
        (root / "if" / cls).mkdir(parents=True)
        for i in range(2):
            PILImage.fromarray(pixels(10 * c + i)).save(root / "if" / cls / f"{i}.png")
    return {"format": "imagefolder", "path": str(root / "if"), "class_text": "a photo of a {name}"}


def make_captions_jsonl(root: Path) -> dict:
    (root / "imgs").mkdir()
    rows = []
    for i in range(3):
        PILImage.fromarray(pixels(i)).save(root / "imgs" / f"{i}.png")
        rows.append({"image": f"imgs/{i}.png", "caption": f"caption {i}"})
    return {"format": "captions", "path": str(write_jsonl(root / "caps.jsonl", rows))}


def make_captions_parquet(root: Path) -> dict:
    cols = {"caption": [f"caption {i}" for i in range(3)], "image": [encode(pixels(i)) for i in range(3)]}
    return {"format": "captions", "path": str(write_parquet(root / "caps.parquet", cols))}


def make_interleaved(root: Path) -> dict:
    cols = {
        "texts": [["intro", None, "after"], [None, "only caption"]],
        "images": [[None, encode(pixels(0)), None], [encode(pixels(1)), None]],
    }
    return {"format": "interleaved", "path": str(write_parquet(root / "il.parquet", cols))}


def make_video_dir(root: Path) -> dict:
    clips = root / "clips"
    (clips / "a").mkdir(parents=True)
    for t in range(3):
        PILImage.fromarray(pixels(t)).save(clips / "a" / f"frame{t}.png")
    (clips / "a.txt").write_text("a clip\n")
    np.save(clips / "b.npy", np.stack([pixels(10 + t) for t in range(4)]))
    return {"format": "video", "path": str(clips)}


MAKERS = {
    "imagefolder": make_imagefolder,
    "captions_jsonl": make_captions_jsonl,
    "captions_parquet": make_captions_parquet,
    "interleaved": make_interleaved,
    "video_dir": make_video_dir,
}


# -- loading each format ---------------------------------------------------------------------------


def test_imagefolder_labels_class_text_and_pixels(tmp_path):
    kw = make_imagefolder(tmp_path)
    docs = load(tmp_path, **{"fmt": kw.pop("format"), "path": kw.pop("path")}, **kw)
    assert [d.label for d in docs] == [0, 0, 1, 1]
    assert [d.segments[0].text for d in docs] == ["a photo of a cat"] * 2 + ["a photo of a dog"] * 2
    assert all(isinstance(d.segments[1], Image) for d in docs)
    np.testing.assert_array_equal(docs[2].segments[1].data, pixels(10))  # PNG is lossless
    assert [d.meta for d in docs] == [{"dataset": "if", "index": i} for i in range(4)]


def test_captions_jsonl_relative_paths(tmp_path):
    docs = load(tmp_path, "captions", make_captions_jsonl(tmp_path)["path"])
    assert [d.segments[0].text for d in docs] == ["caption 0", "caption 1", "caption 2"]
    for i, d in enumerate(docs):
        np.testing.assert_array_equal(d.segments[1].data, pixels(i))
    assert docs[1].meta == {"dataset": "caps.jsonl", "index": 1}


def test_captions_parquet_bytes_json_list_and_column_mapping(tmp_path):
    docs = load(tmp_path, "captions", make_captions_parquet(tmp_path)["path"])
    np.testing.assert_array_equal(docs[2].segments[1].data, pixels(2))
    (tmp_path / "j").mkdir()
    PILImage.fromarray(pixels(5)).save(tmp_path / "j" / "x.png")
    (tmp_path / "j" / "d.json").write_text(json.dumps([{"img": "x.png", "txt": "hello"}]))
    docs = load(tmp_path, "captions", tmp_path / "j" / "d.json", columns={"image": "img", "caption": "txt"})
    assert docs[0].segments[0].text == "hello"
    np.testing.assert_array_equal(docs[0].segments[1].data, pixels(5))


def test_captions_hf_image_feature_and_data_files_in_two_folders(tmp_path):
    from datasets import Dataset, Features, Value
    from datasets import Image as HFImage

    feats = Features(caption=Value("string"), image=HFImage())
    Dataset.from_dict(
        {"caption": ["hf"], "image": [{"bytes": encode(pixels(7)), "path": None}]}, features=feats
    ).to_parquet(tmp_path / "hf.parquet")
    docs = load(tmp_path, "captions", tmp_path / "hf.parquet")
    np.testing.assert_array_equal(docs[0].segments[1].data, pixels(7))
    for k in ("a", "b"):  # each data file's relative paths start at its own folder
        (tmp_path / k).mkdir()
        PILImage.fromarray(pixels(ord(k))).save(tmp_path / k / "im.png")
        write_jsonl(tmp_path / k / "d.jsonl", [{"image": "im.png", "caption": k}])
    src = DataSource(
        "captions", data_files=[str(tmp_path / "*" / "d.jsonl")], name="two", cache_dir=str(tmp_path / "hf")
    )
    docs = list(load_documents(src))
    assert [d.segments[0].text for d in docs] == ["a", "b"]
    np.testing.assert_array_equal(docs[1].segments[1].data, pixels(ord("b")))
    assert [d.meta["index"] for d in docs] == [0, 1]


def test_interleaved_segments_in_order(tmp_path):
    docs = load(tmp_path, "interleaved", make_interleaved(tmp_path)["path"])
    kinds = [[type(s).__name__ for s in d.segments] for d in docs]
    assert kinds == [["Text", "Image", "Text"], ["Image", "Text"]]
    assert docs[0].segments[2].text == "after"
    np.testing.assert_array_equal(docs[1].segments[0].data, pixels(1))
    # jsonl with relative paths
    PILImage.fromarray(pixels(3)).save(tmp_path / "p.png")
    path = write_jsonl(tmp_path / "il.jsonl", [{"texts": ["x", None], "images": [None, "p.png"]}])
    docs = load(tmp_path, "interleaved", path)
    np.testing.assert_array_equal(docs[0].segments[1].data, pixels(3))


def test_video_folder_of_frames_and_npy_with_sidecar_captions(tmp_path):
    docs = load(tmp_path, "video", make_video_dir(tmp_path)["path"])
    assert docs[0].segments[0].text == "a clip" and len(docs[1].segments) == 1
    np.testing.assert_array_equal(docs[0].segments[1].data, np.stack([pixels(t) for t in range(3)]))
    np.testing.assert_array_equal(docs[1].segments[0].data, np.stack([pixels(10 + t) for t in range(4)]))
    docs = load(tmp_path, "video", tmp_path / "clips", num_frames=2, frame_stride=2)
    np.testing.assert_array_equal(docs[0].segments[1].data, np.stack([pixels(0), pixels(2)]))
    np.testing.assert_array_equal(docs[1].segments[0].data, np.stack([pixels(10), pixels(12)]))
    policy = RecordPolicy("skip")
    reader = load_documents(DataSource("video", path=str(tmp_path / "clips"), num_frames=4), policy)
    assert [d.meta["index"] for d in reader] == [1] and policy.counts == {E.TOO_FEW_FRAMES: 1}


def test_video_frames_sorted_as_numbers_and_table_of_clips(tmp_path):
    (tmp_path / "v" / "c").mkdir(parents=True)
    for t in (1, 2, 10):  # name order would put frame10 before frame2
        PILImage.fromarray(np.full((4, 4, 3), t, np.uint8)).save(tmp_path / "v" / "c" / f"frame{t}.png")
    np.save(tmp_path / "v" / "g.npy", np.zeros((2, 4, 4), np.uint8))  # T x H x W greyscale
    rows = [{"video": "c", "caption": "moving"}, {"video": "g.npy", "caption": "grey"}]
    docs = load(tmp_path, "video", write_jsonl(tmp_path / "v" / "clips.jsonl", rows))
    assert [int(f[0, 0, 0]) for f in docs[0].segments[1].data] == [1, 2, 10]
    assert docs[1].segments[1].data.shape == (2, 4, 4, 3)


def test_video_class_folders_and_label_column(tmp_path):
    """UCF-101's layout path/<class>/<clip>: labels are the sorted class folders' indices (and the
    class text when asked); a table's `label` column gives them too."""
    root = tmp_path / "ucf"
    for name, clips in (("PlayingPiano", 2), ("ApplyEyeMakeup", 1)):
        (root / name).mkdir(parents=True)
        for c in range(clips):
            np.save(root / name / f"v_{name}_g01_c0{c}.npy", np.full((2, 4, 4, 3), c, np.uint8))
    reader = load_documents(DataSource("video", path=str(root), class_folders=True, class_text="a video of {name}"))
    assert reader.class_names == ["ApplyEyeMakeup", "PlayingPiano"]
    assert [d.label for d in reader] == [0, 1, 1]
    assert [d.segments[0].text for d in reader] == ["a video of ApplyEyeMakeup"] + ["a video of PlayingPiano"] * 2
    assert reader.get(2).segments[1].data.shape == (2, 4, 4, 3) and int(reader.get(2).segments[1].data.max()) == 1
    rows = [{"video": str(root / "PlayingPiano" / "v_PlayingPiano_g01_c00.npy"), "label": 7}]
    docs = load(tmp_path, "video", write_jsonl(tmp_path / "labelled.jsonl", rows))
    assert docs[0].label == 7 and len(docs[0].segments) == 1
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"video": rows[0]["video"], "label": "piano"}])
    with pytest.raises(BadRecord, match="label"):
        list(load_documents(DataSource("video", data_files=[bad])))
    with pytest.raises(ValueError, match="class_folders"):
        DataSource("captions", path=str(root), class_folders=True)


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_streaming_equals_non_streaming(tmp_path, name):
    kw = MAKERS[name](tmp_path)
    a = [as_tuple(d) for d in load_documents(DataSource(**kw, cache_dir=str(tmp_path / "hf")))]
    b = [as_tuple(d) for d in load_documents(DataSource(**kw, streaming=True))]
    assert a == b and len(a) >= 2


def test_random_access_equals_iteration_and_random_crops_are_seeded(tmp_path):
    kw = make_captions_jsonl(tmp_path)
    conv = {"size": 4, "resize": "none", "crop": "random"}
    r = load_documents(DataSource(**kw, conversion=conv, seed=1, cache_dir=str(tmp_path / "hf")))
    assert len(r) == 3
    assert [as_tuple(d) for d in r] == [as_tuple(r.get(i)) for i in range(3)]
    assert as_tuple(r.get(1, epoch=2)) == as_tuple(r.get(1, epoch=2))
    crops = {r.get(1, epoch=e).segments[1].data.tobytes() for e in range(8)}
    assert len(crops) > 1  # a new crop per epoch, each reproducible


def test_image_modes_in_files_are_converted_not_errors(tmp_path):
    rgb = pixels(0)
    ims = {
        "L": PILImage.fromarray(rgb[..., 0]),
        "RGBA": PILImage.fromarray(np.dstack([rgb, np.full((8, 8), 128, np.uint8)])),
        "P": PILImage.fromarray(rgb).convert("P"),
        "CMYK": PILImage.fromarray(rgb).convert("CMYK"),
        "LA": PILImage.fromarray(rgb[..., 0]).convert("LA"),
    }
    rows = []
    for mode, im in ims.items():
        im.save(tmp_path / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}")
        rows.append({"image": f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}", "caption": mode})
    docs = load(tmp_path, "captions", write_jsonl(tmp_path / "m.jsonl", rows))
    assert [d.segments[1].data.shape for d in docs] == [(8, 8, 3)] * len(ims)
    docs = load(tmp_path, "captions", tmp_path / "m.jsonl", conversion={"mode": "L"})
    assert [d.segments[1].data.shape for d in docs] == [(8, 8, 1)] * len(ims)


# -- configuration -------------------------------------------------------------------------------


def test_datasource_validation_names_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"unknown DataSource keys \['colums'\]"):
        DataSource.from_dict({"format": "captions", "path": "x", "colums": {}})
    with pytest.raises(ValueError, match="format must be one of"):
        DataSource("csv", path="x")
    with pytest.raises(ValueError, match=r"unknown columns \['label'\]"):
        DataSource("captions", path="x", columns={"label": "y"})
    with pytest.raises(ValueError, match=r"unknown ImageConversion keys \['sise'\]"):
        DataSource.from_dict({"format": "captions", "path": "x", "conversion": {"sise": 8}})
    with pytest.raises(ValueError, match="on_bad_record"):
        DataSource("captions", path="x", on_bad_record="ignore")
    with pytest.raises(ValueError, match="num_frames"):
        DataSource("captions", path="x", num_frames=4)
    with pytest.raises(ValueError, match="path` or `data_files"):
        DataSource("captions")
    src = DataSource.from_dict({"format": "captions", "path": "a/b.jsonl", "conversion": {"size": [4, 6]}})
    assert src.name == "b.jsonl" and src.conversion.size == (4, 6)
    assert DataSource.from_dict(src.to_dict()) == src


def test_missing_column_is_a_config_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"image": "x.png", "text": "a"}])
    with pytest.raises(ValueError, match=r"column 'caption' .* columns are \['image', 'text'\]"):
        load(tmp_path, "captions", path, on_bad_record="skip")


def test_unparseable_file_is_named(tmp_path):
    (tmp_path / "broken.jsonl").write_text('{"image": "a.png", "caption": "x"}\n{"image": "b.png", "caption": \n')
    for streaming in (False, True):
        with pytest.raises(ValueError, match=r"dataset 'broken.jsonl': cannot (load|read) .*broken.jsonl"):
            src = DataSource(
                "captions", path=str(tmp_path / "broken.jsonl"), streaming=streaming, cache_dir=str(tmp_path)
            )
            list(load_documents(src))


# -- bad input: each case under both policies ----------------------------------------------------


def _captions_parquet(tmp_path, bad_image=None, bad_caption=None):
    images = [encode(pixels(i)) for i in range(3)]
    captions = [f"caption {i}" for i in range(3)]
    if bad_image is not None:
        images[1] = bad_image
    if bad_caption is not None:
        captions[1] = bad_caption
    return {
        "format": "captions",
        "path": str(write_parquet(tmp_path / "bad.parquet", {"caption": captions, "image": images})),
    }


def _captions_jsonl(tmp_path, record: dict, files: dict | None = None):
    rows = []
    for i in range(3):
        PILImage.fromarray(pixels(i)).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "caption": f"caption {i}"})
    for name, write in (files or {}).items():
        write(tmp_path / name)
    rows[1] = record
    return {"format": "captions", "path": str(write_jsonl(tmp_path / "bad.jsonl", rows))}


def _interleaved(tmp_path, texts, images):
    cols = {
        "texts": [["text 0", None], texts, ["text 2", None]],
        "images": [[None, encode(pixels(0))], images, [None, encode(pixels(2))]],
    }
    return {"format": "interleaved", "path": str(write_parquet(tmp_path / "bad.parquet", cols))}


def _clips(tmp_path, bad):
    root = tmp_path / "clips"
    root.mkdir()
    for i in range(3):
        np.save(root / f"{i}.npy", np.stack([pixels(i)] * 2))
    bad(root)
    return {"format": "video", "path": str(root)}


def _frames_of_two_sizes(root):
    (root / "1.npy").unlink()
    (root / "1").mkdir()
    PILImage.fromarray(pixels(0)).save(root / "1" / "a.png")
    PILImage.fromarray(pixels(0, 6, 8)).save(root / "1" / "b.png")


def _imagefolder_with_truncated(tmp_path):
    for c in ("a", "b"):
        (tmp_path / "if" / c).mkdir(parents=True)
    PILImage.fromarray(pixels(0)).save(tmp_path / "if" / "a" / "0.png")
    (tmp_path / "if" / "a" / "1.jpg").write_bytes(encode(pixels(1, 32, 32), "JPEG")[:200])
    PILImage.fromarray(pixels(2)).save(tmp_path / "if" / "b" / "2.png")
    return {"format": "imagefolder", "path": str(tmp_path / "if")}


def _nan_npy(p):
    a = np.random.default_rng(0).random((8, 8, 3))
    a[2, 3, 1] = np.nan
    np.save(p, a)


# name -> (build(tmp_path) -> DataSource kwargs, field, reason)
BAD = {
    "truncated image bytes": (
        lambda t: _captions_parquet(t, bad_image=encode(pixels(1))[:40]),
        "image",
        E.UNREADABLE_IMAGE,
    ),
    "garbage image bytes": (lambda t: _captions_parquet(t, bad_image=b"not an image"), "image", E.UNREADABLE_IMAGE),
    "truncated jpeg in imagefolder": (_imagefolder_with_truncated, "image", E.UNREADABLE_IMAGE),
    "missing file": (lambda t: _captions_jsonl(t, {"image": "gone.png", "caption": "c"}), "image", E.MISSING_FILE),
    "empty text": (lambda t: _captions_parquet(t, bad_caption="   "), "caption", E.EMPTY_TEXT),
    "invalid UTF-8": (lambda t: _captions_parquet(t, bad_caption=b"ok \xff\xfe"), "caption", E.INVALID_UTF8),
    "NaN in array": (
        lambda t: _captions_jsonl(t, {"image": "nan.npy", "caption": "c"}, {"nan.npy": _nan_npy}),
        "image",
        E.NON_FINITE,
    ),
    "inf in video array": (
        lambda t: _clips(t, lambda r: np.save(r / "1.npy", np.full((2, 8, 8, 3), np.inf))),
        "video",
        E.NON_FINITE,
    ),
    "missing field (null)": (
        lambda t: _captions_jsonl(t, {"image": "1.png", "caption": None}),
        "caption",
        E.MISSING_FIELD,
    ),
    "missing field (absent key)": (lambda t: _captions_jsonl(t, {"caption": "c"}), "image", E.MISSING_FIELD),
    "wrongly typed caption": (lambda t: _captions_jsonl(t, {"image": "1.png", "caption": 5}), "caption", E.WRONG_TYPE),
    "wrongly typed image": (lambda t: _captions_jsonl(t, {"image": 7, "caption": "c"}), "image", E.WRONG_TYPE),
    "interleaved lists disagree in length": (
        lambda t: _interleaved(t, ["a", None, "b"], [None, encode(pixels(1))]),
        "texts/images",
        E.LENGTH_MISMATCH,
    ),
    "interleaved slot with both": (
        lambda t: _interleaved(t, ["a", "b"], [None, encode(pixels(1))]),
        "texts[1]/images[1]",
        E.BAD_SLOT,
    ),
    "interleaved slot unreadable": (
        lambda t: _interleaved(t, ["a", None], [None, b"\x89PNG\r\n"]),
        "images[1]",
        E.UNREADABLE_IMAGE,
    ),
    "interleaved empty text": (
        lambda t: _interleaved(t, ["", None], [None, encode(pixels(1))]),
        "texts[0]",
        E.EMPTY_TEXT,
    ),
    "video frames differ in size": (lambda t: _clips(t, _frames_of_two_sizes), "video", E.WRONG_SIZE),
    "video sidecar invalid UTF-8": (
        lambda t: _clips(t, lambda r: (r / "1.txt").write_bytes(b"\xc3\x28")),
        "caption",
        E.INVALID_UTF8,
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_record_raise_and_skip(tmp_path, case):
    build, field, reason = BAD[case]
    kw = build(tmp_path)
    src = DataSource(**kw, name="mydata", cache_dir=str(tmp_path / "hf"))
    with pytest.raises(BadRecord) as info:
        list(load_documents(src))
    e = info.value
    assert (e.dataset, e.index, e.field, e.reason) == ("mydata", 1, field, reason)
    assert "'mydata'" in str(e) and "record 1" in str(e) and repr(field) in str(e) and reason in str(e)

    policy = RecordPolicy("skip")
    reader = load_documents(DataSource(**kw, name="mydata", cache_dir=str(tmp_path / "hf")), policy)
    docs = list(reader)
    assert [d.meta["index"] for d in docs] == [0, 2]
    assert policy.counts == {reason: 1} and policy.summary() == f"skipped 1 bad record: 1 {reason}"
    # the good records come through intact: equal to reading them one by one
    assert [as_tuple(d) for d in docs] == [as_tuple(reader.document(reader.record(i))) for i in (0, 2)]


def test_wrong_size_per_on_wrong_size(tmp_path):
    kw = _captions_parquet(tmp_path, bad_image=encode(pixels(1, 10, 8)))
    with pytest.raises(BadRecord, match=r"record 1, field 'image': wrong size \(10x8, expected 8x8\)"):
        list(load_documents(DataSource(**kw, conversion={"size": 8, "on_wrong_size": "error"})))
    policy = RecordPolicy("skip")
    docs = list(load_documents(DataSource(**kw, conversion={"size": 8, "on_wrong_size": "error"}), policy))
    assert [d.meta["index"] for d in docs] == [0, 2] and policy.counts == {E.WRONG_SIZE: 1}
    docs = list(load_documents(DataSource(**kw, conversion={"size": 8})))  # convert: resized and cropped
    assert [d.segments[1].data.shape for d in docs] == [(8, 8, 3)] * 3


def test_policy_counts_summary_and_state():
    p = RecordPolicy("skip")
    for r in (E.EMPTY_TEXT, E.UNREADABLE_IMAGE, E.UNREADABLE_IMAGE):
        p.handle(BadRecord("d", 0, "f", r))
    assert p.counts == {E.EMPTY_TEXT: 1, E.UNREADABLE_IMAGE: 2}
    assert p.summary() == "skipped 3 bad records: 2 unreadable image, 1 empty text"
    q = RecordPolicy("skip")
    q.load_state_dict(json.loads(json.dumps(p.state_dict())))
    assert q.report() == p.report()
    with pytest.raises(BadRecord):
        RecordPolicy("raise").handle(BadRecord("d", 3, "f", "why"))
    with pytest.raises(BadRecord, match="text longer than the context"):
        E.check_text_length(10, 8, {"dataset": "d", "index": 4})


# -- conversion ---------------------------------------------------------------------------------


def convert(x, rng=None, **kw) -> np.ndarray:
    return ImageConversion(**kw)(x, rng)


def test_conversion_of_each_mode():
    rgb = pixels(0)
    grey = rgb[..., 0]
    np.testing.assert_array_equal(convert(PILImage.fromarray(grey)), np.repeat(grey[..., None], 3, -1))
    np.testing.assert_array_equal(
        convert(PILImage.fromarray(rgb), mode="L")[..., 0], np.array(PILImage.fromarray(rgb).convert("L"))
    )
    rgba = np.dstack([rgb, np.zeros((8, 8), np.uint8)])
    rgba[0, 0, 3] = 255
    out = convert(PILImage.fromarray(rgba), background=(0, 255, 0))
    assert tuple(out[0, 0]) == tuple(rgb[0, 0]) and tuple(out[1, 1]) == (0, 255, 0)  # alpha composited
    half = np.array([[[255, 0, 0, 128]]], np.uint8)
    assert np.abs(convert(half).astype(int)[0, 0] - [255, 127, 127]).max() <= 1
    assert convert(PILImage.fromarray(half), mode="L", background=0)[0, 0, 0] in range(36, 40)
    la = PILImage.fromarray(grey).convert("LA")
    np.testing.assert_array_equal(convert(la, mode="L")[..., 0], grey)
    pal = PILImage.fromarray(rgb).convert("P")
    np.testing.assert_array_equal(convert(pal), np.array(pal.convert("RGB")))
    pal.info["transparency"] = int(np.array(pal)[0, 0])
    assert tuple(convert(pal, background=(1, 2, 3))[0, 0]) == (1, 2, 3)
    cmyk = PILImage.new("CMYK", (2, 2), (0, 255, 255, 0))
    assert tuple(convert(cmyk)[0, 0]) == (255, 0, 0)
    i16 = PILImage.fromarray(np.array([[0, 257 * 100, 65535]], np.uint16))
    assert i16.mode.startswith("I") and convert(i16, mode="L")[0, :, 0].tolist() == [0, 100, 255]
    assert convert(PILImage.new("1", (2, 2), 1), mode="L")[0, 0, 0] == 255


def test_conversion_of_arrays():
    f = np.linspace(0, 1, 16).reshape(4, 4)
    assert convert(f, mode="L")[..., 0].tolist()[0][:2] == [0, 17]
    assert convert(f * 2 - 1, mode="L", float_range=(-1, 1))[3, 3, 0] == 255
    assert convert(np.ones((2, 2), bool))[0, 0].tolist() == [255, 255, 255]
    assert convert(np.full((2, 2, 1), 65535, np.uint16), mode="L")[0, 0, 0] == 255
    assert convert(np.arange(4).reshape(2, 2).astype(np.int64), mode="L")[1, 1, 0] == 3
    for bad, reason in [
        (np.array([[0.5, np.nan]]), E.NON_FINITE),
        (np.array([[0.5, np.inf]]), E.NON_FINITE),
        (np.array([[0.5, 3.0]]), E.BAD_ARRAY),
        (np.zeros((2, 2, 5), np.uint8), E.BAD_ARRAY),
        (np.array([[-1, 300]]), E.BAD_ARRAY),
    ]:
        with pytest.raises(BadValue) as info:
            convert(bad)
        assert info.value.reason == reason


def test_resize_and_crop():
    im = PILImage.fromarray(pixels(0, 20, 10))
    out = convert(im, size=8)
    ref = np.array(im.resize((8, 16), PILImage.Resampling.BICUBIC).crop((0, 4, 8, 12)))
    np.testing.assert_array_equal(out, ref)
    assert convert(im, size=[6, 12], resize="exact", crop="none").shape == (6, 12, 3)
    np.testing.assert_array_equal(convert(im, size=(4, 4), resize="none"), np.array(im)[8:12, 3:7])
    with pytest.raises(BadValue, match="smaller than the crop"):
        convert(im, size=30, resize="none")
    with pytest.raises(BadValue, match="wrong size"):
        convert(im, size=8, on_wrong_size="error")
    same = pixels(1)
    np.testing.assert_array_equal(convert(same, size=8, crop="random"), same)  # right size: untouched
    kw = {"size": 4, "resize": "none", "crop": "random"}
    a = [convert(im, np.random.default_rng(s), **kw).tobytes() for s in range(6)]
    b = [convert(im, np.random.default_rng(s), **kw).tobytes() for s in range(6)]
    assert a == b and len(set(a)) > 1
    with pytest.raises(ValueError, match="needs a numpy Generator"):
        convert(im, **kw)


def test_video_frames_share_one_crop_and_exif_is_applied():
    clip = np.stack([pixels(0, 12, 12)] * 3)
    out = ImageConversion(size=6, resize="none", crop="random").frames(clip, np.random.default_rng(0))
    assert out.shape == (3, 6, 6, 3) and all(np.array_equal(out[0], f) for f in out)
    assert ImageConversion().frames(np.zeros((2, 4, 5), np.uint8)).shape == (2, 4, 5, 3)
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    PILImage.fromarray(pixels(0, 4, 8)).save(buf, "JPEG", exif=exif)
    assert convert(PILImage.open(buf)).shape == (8, 4, 3)
    assert convert(PILImage.open(buf), exif_transpose=False).shape == (4, 8, 3)


def test_conversion_validation():
    for kw, msg in [
        ({"mode": "CMYK"}, "mode must be one of"),
        ({"size": 0}, "size must be"),
        ({"size": [4, 4, 4]}, "size must be"),
        ({"size": 4, "crop": "none"}, "cannot guarantee size"),
        ({"background": 300}, "background"),
        ({"float_range": (1, 0)}, "float_range"),
        ({"resample": "cubic"}, "resample"),
    ]:
        with pytest.raises(ValueError, match=msg):
            ImageConversion(**kw)
    assert ImageConversion(size=4, crop="none", on_wrong_size="error").size == (4, 4)
    c = ImageConversion(size=[4, 6], background=9)
    assert ImageConversion.from_dict(c.to_dict()) == c
