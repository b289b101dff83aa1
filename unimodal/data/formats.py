"""Documents from the formats people have, read through HF `datasets` from local files.

One entry point: `load_documents(DataSource(...))` -> a `DocumentReader`, an iterable of
`Document`s in record order (random access and `len()` unless streaming). Formats:

- ``imagefolder``: ``path/<class>/<image>``; `Document([Image], label=class index)`, optionally
  preceded by `Text(class_text.format(name=class name))` and a `caption` column (metadata file).
- ``captions``: (image, caption) records in json / jsonl / parquet; the image column holds a path
  (relative to the data file), raw bytes, or an HF image; `Document([Text(caption), Image])`.
- ``interleaved``: the OBELICS/MMC4 layout, parallel lists ``texts: [str|None]`` and
  ``images: [path|bytes|None]`` with exactly one of the two set per slot; the segments in order.
- ``video``: clips as folders of frame images (name order, numbers compared as numbers) or .npy
  arrays (T x H x W x C, or T x H x W greyscale). `path` a directory: every sub-folder / .npy is a
  clip, captioned by a sidecar ``<clip>.txt`` when there is one; with `class_folders` the
  directory is ``path/<class>/<clip>`` (UCF-101's layout) and each clip's label is its class
  index (classes sorted by name); `path`/`data_files` a table: a ``video`` column (path or .npy
  bytes), optional ``caption`` and ``label`` (class index) columns.
  `Document([Text(class_text)?, Text(caption)?, Image(frames T x H x W x C)], label)`.

Every document carries `meta = {"dataset": name, "index": record index}`. Broken records become
`BadRecord`s naming dataset, index, field and reason, raised or skipped and counted per
`on_bad_record` (see `errors.py`). Records are read raw (`records()`) and decoded separately
(`decode()`), so a resumed shuffle can replay a stream without decoding the images it skips.
"""

from __future__ import annotations

import bisect
import dataclasses
import glob
import io
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image as PILImage

from ..documents import Document, Image, Text
from .convert import ImageConversion
from .errors import (
    BAD_ARRAY,
    BAD_SLOT,
    EMPTY_DOCUMENT,
    EMPTY_TEXT,
    INVALID_UTF8,
    LENGTH_MISMATCH,
    MISSING_FIELD,
    MISSING_FILE,
    POLICIES,
    TOO_FEW_FRAMES,
    UNREADABLE_IMAGE,
    WRONG_TYPE,
    BadRecord,
    BadValue,
    RecordPolicy,
)

log = logging.getLogger("unimodal.data")

FORMATS = ("imagefolder", "captions", "interleaved", "video")
# logical column -> default name in the data; optional columns are used only when present
COLUMNS = {
    "imagefolder": {"image": "image", "label": "label", "caption": "caption"},
    "captions": {"image": "image", "caption": "caption"},
    "interleaved": {"texts": "texts", "images": "images"},
    "video": {"video": "video", "caption": "caption", "label": "label"},
}
OPTIONAL = {"imagefolder": {"label", "caption"}, "video": {"caption", "label"}}
TABLE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_NPY_MAGIC = b"\x93NUMPY"


@dataclass
class DataSource:
    """Where documents come from and how to read them; validated on construction.

    `path` is a file, a glob or a directory (an image folder, a folder of tables, or for `video` a
    folder of clips); `data_files` lists files or globs (relative to `path` when it is a directory).
    `columns` maps logical columns (see `COLUMNS`) to the names in the data. `seed` seeds random
    crops, per record and epoch. `cache_dir` is the HF `datasets` cache (non-streaming only).
    """

    format: str
    path: str | None = None
    data_files: list[str] | None = None
    name: str | None = None
    split: str = "train"
    columns: dict[str, str] = field(default_factory=dict)
    streaming: bool = False
    conversion: ImageConversion = field(default_factory=ImageConversion)
    on_bad_record: str = "raise"
    class_text: str | None = None
    class_folders: bool = False
    num_frames: int | None = None
    frame_stride: int = 1
    seed: int = 0
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"DataSource.format must be one of {FORMATS}, got {self.format!r}")
        if self.path is None and not self.data_files:
            raise ValueError("DataSource needs `path` or `data_files`")
        if isinstance(self.data_files, (str, os.PathLike)):
            self.data_files = [self.data_files]
        if self.data_files is not None:
            self.data_files = [str(f) for f in self.data_files]
        if self.path is not None:
            self.path = str(self.path)
        unknown = sorted(set(self.columns) - set(COLUMNS[self.format]))
        if unknown:
            raise ValueError(
                f"unknown columns {unknown} for format {self.format!r}; known are {sorted(COLUMNS[self.format])}"
            )
        if not all(isinstance(v, str) and v for v in self.columns.values()):
            raise ValueError(f"DataSource.columns must map to column names, got {self.columns!r}")
        if isinstance(self.conversion, dict):
            self.conversion = ImageConversion.from_dict(self.conversion)
        if not isinstance(self.conversion, ImageConversion):
            raise TypeError(f"DataSource.conversion must be an ImageConversion or a dict, got {self.conversion!r}")
        if self.on_bad_record not in POLICIES:
            raise ValueError(f"DataSource.on_bad_record must be one of {POLICIES}, got {self.on_bad_record!r}")
        if self.class_text is not None:
            if self.format not in ("imagefolder", "video"):
                raise ValueError("DataSource.class_text applies to formats 'imagefolder' and 'video' only")
            try:
                self.class_text.format(name="x")
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(
                    f"DataSource.class_text must be a template with {{name}}, got {self.class_text!r}"
                ) from e
        if self.format != "video" and (self.num_frames is not None or self.frame_stride != 1 or self.class_folders):
            raise ValueError("DataSource.num_frames, frame_stride and class_folders apply to format 'video' only")
        if (self.num_frames is not None and self.num_frames < 1) or self.frame_stride < 1:
            raise ValueError(f"num_frames and frame_stride must be >= 1, got {self.num_frames}, {self.frame_stride}")
        if self.name is None:
            self.name = Path(self.path if self.path is not None else self.data_files[0]).name  # type: ignore[index]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSource:
        """Build from a config mapping (e.g. YAML); unknown keys are named in the error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown DataSource keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["conversion"] = self.conversion.to_dict()
        d["columns"] = dict(self.columns)
        return d

    def column(self, key: str) -> str:
        """The data's name for logical column `key`."""
        return self.columns.get(key, COLUMNS[self.format][key])


class Record(NamedTuple):
    """One raw, undecoded record: its index, its fields, and the folder relative paths start from."""

    index: int
    row: dict[str, Any]
    base: str


def load_documents(source: DataSource | dict[str, Any], policy: RecordPolicy | None = None) -> DocumentReader:
    """Documents of `source` (a DataSource or its dict form), in record order."""
    return DocumentReader(source if isinstance(source, DataSource) else DataSource.from_dict(source), policy)


class DocumentReader:
    """An iterable of the Documents of one DataSource; `len()`/`get()` when not streaming.

    Bad records raise or are skipped per `policy` (default: the source's `on_bad_record`);
    `policy.summary()` reports what was skipped, and is logged at the end of each full pass.
    """

    def __init__(self, source: DataSource, policy: RecordPolicy | None = None) -> None:
        self.source = source
        self.name: str = source.name  # type: ignore[assignment]
        self.policy = policy or RecordPolicy(source.on_bad_record)
        self._parts = _open(source)
        self._offsets = None if source.streaming else np.cumsum([0] + [len(p.rows) for p in self._parts]).tolist()
        self.class_names = _class_names(self._parts, source)

    def __iter__(self) -> Iterator[Document]:
        for rec in self.records():
            doc = self.decode(rec)
            if doc is not None:
                yield doc
        if self.policy.total:
            log.warning("dataset %r: %s", self.name, self.policy.summary())

    def __len__(self) -> int:
        if self._offsets is None:
            raise TypeError(f"dataset {self.name!r} is streaming and has no length")
        return self._offsets[-1]

    def records(self) -> Iterator[Record]:
        """Raw records in order, cheap to read (nothing decoded)."""
        i = 0
        for part in self._parts:
            rows = iter(part.rows)
            while True:
                try:
                    row = next(rows)
                except StopIteration:
                    break
                except Exception as e:  # a file that cannot be parsed at all: name it, whatever the policy
                    raise ValueError(
                        f"dataset {self.name!r}: cannot read the data in {part.where} at record {i}: {e}"
                    ) from e
                yield Record(i, dict(row), part.base)
                i += 1

    def record(self, index: int) -> Record:
        """The raw record at `index` (not streaming)."""
        n = len(self)
        if not 0 <= index < n:
            raise IndexError(f"dataset {self.name!r}: record {index} out of range for {n} records")
        k = bisect.bisect_right(self._offsets, index) - 1  # type: ignore[arg-type]
        part = self._parts[k]
        return Record(index, dict(part.rows[index - self._offsets[k]]), part.base)  # type: ignore[index]

    def get(self, index: int, epoch: int = 0) -> Document | None:
        """The document at `index`, or None if it is a bad record and the policy skips it."""
        return self.decode(self.record(index), epoch)

    def decode(self, record: Record, epoch: int = 0) -> Document | None:
        """A record as a Document, or None when it is bad and skipped (counted by the policy)."""
        try:
            return self.document(record, epoch)
        except BadRecord as e:
            self.policy.handle(e)
            return None

    def document(self, record: Record, epoch: int = 0) -> Document:
        """A record as a Document; raises `BadRecord` whatever the policy."""
        src = self.source
        rng = (
            np.random.default_rng([src.seed % 2**63, epoch, record.index]) if src.conversion.crop == "random" else None
        )
        ctx = _Context(self, record, rng)
        segments = _DECODERS[src.format](ctx)
        meta = {"dataset": self.name, "index": record.index}
        return Document(segments, label=ctx.label, meta=meta)


class _Context:
    """Reads the fields of one record, turning every problem into a BadRecord that names it."""

    def __init__(self, reader: DocumentReader, record: Record, rng: np.random.Generator | None) -> None:
        self.reader, self.record, self.rng = reader, record, rng
        self.source = reader.source
        self.label: int | None = None

    def bad(self, field: str, err: BadValue) -> BadRecord:
        return BadRecord.from_value(self.reader.name, self.record.index, field, err)

    def has(self, key: str) -> bool:
        return self.source.column(key) in self.record.row

    def value(self, key: str) -> tuple[str, Any]:
        """(column name, value) of logical column `key`; a column absent from the data is a config error."""
        col = self.source.column(key)
        if col not in self.record.row:
            raise ValueError(
                f"dataset {self.reader.name!r}: column {col!r} (for {key!r}) is not in the data; columns are "
                f"{sorted(self.record.row)}; map it with columns={{{key!r}: ...}}"
            )
        return col, self.record.row[col]

    def text(self, value: Any, field: str) -> Text:
        try:
            return Text(_text(value))
        except BadValue as e:
            raise self.bad(field, e) from None

    def image(self, value: Any, field: str, video: bool = False) -> Image:
        try:
            visual = _visual(value, self.record.base)
            conv = self.source.conversion
            if video or isinstance(visual, list):
                frames = _frames(visual, self.source) if video else visual
                if isinstance(frames, list):
                    frames = [_open_file(p) if isinstance(p, Path) else p for p in frames]
                return Image(conv.frames(frames, self.rng))
            return Image(conv(visual, self.rng))
        except BadValue as e:
            raise self.bad(field, e) from None

    def sequence(self, key: str) -> tuple[str, list]:
        col, v = self.value(key)
        if v is None:
            raise self.bad(col, BadValue(MISSING_FIELD, "null"))
        if not isinstance(v, (list, tuple, np.ndarray)):
            raise self.bad(col, BadValue(WRONG_TYPE, f"expected a list, got {type(v).__name__}"))
        return col, list(v)


def _label(ctx: _Context) -> list:
    """Read the optional class label into the document; the class text segment, if configured."""
    segments: list = []
    if ctx.has("label"):
        lcol, label = ctx.value("label")
        if label is None or (isinstance(label, int) and label < 0):
            raise ctx.bad(lcol, BadValue(MISSING_FIELD, "no class label"))
        if not isinstance(label, (int, np.integer)) or isinstance(label, bool):
            raise ctx.bad(lcol, BadValue(WRONG_TYPE, f"expected a class index, got {type(label).__name__}"))
        ctx.label = int(label)
        names = ctx.reader.class_names
        if ctx.source.class_text is not None and names:
            segments.append(Text(ctx.source.class_text.format(name=names[ctx.label])))
    return segments


def _imagefolder(ctx: _Context) -> list:
    col, v = ctx.value("image")
    segments = _label(ctx)
    if ctx.has("caption"):
        ccol, caption = ctx.value("caption")
        segments.append(ctx.text(caption, ccol))
    return segments + [ctx.image(v, col)]


def _captions(ctx: _Context) -> list:
    ccol, caption = ctx.value("caption")
    icol, image = ctx.value("image")
    return [ctx.text(caption, ccol), ctx.image(image, icol)]


def _interleaved(ctx: _Context) -> list:
    tcol, texts = ctx.sequence("texts")
    icol, images = ctx.sequence("images")
    if len(texts) != len(images):
        detail = f"{len(texts)} texts, {len(images)} images"
        raise ctx.bad(f"{tcol}/{icol}", BadValue(LENGTH_MISMATCH, detail))
    if not texts:
        raise ctx.bad(f"{tcol}/{icol}", BadValue(EMPTY_DOCUMENT, "no slots"))
    segments: list = []
    for k, (t, im) in enumerate(zip(texts, images, strict=True)):
        if (t is None) == (im is None):
            detail = "both a text and an image" if t is not None else "neither a text nor an image"
            raise ctx.bad(f"{tcol}[{k}]/{icol}[{k}]", BadValue(BAD_SLOT, detail))
        segments.append(ctx.text(t, f"{tcol}[{k}]") if t is not None else ctx.image(im, f"{icol}[{k}]"))
    return segments


def _video(ctx: _Context) -> list:
    vcol, v = ctx.value("video")
    segments = _label(ctx)
    if ctx.has("caption"):
        ccol, caption = ctx.value("caption")
        segments.append(ctx.text(caption, ccol))
    return segments + [ctx.image(v, vcol, video=True)]


_DECODERS = {"imagefolder": _imagefolder, "captions": _captions, "interleaved": _interleaved, "video": _video}


# -- values ---------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    """A caption or text slot: str, or UTF-8 bytes; empty or whitespace-only text is bad."""
    if value is None:
        raise BadValue(MISSING_FIELD, "null")
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadValue(INVALID_UTF8, f"byte {e.start}: {bytes(value)[e.start : e.start + 4]!r}") from None
    elif not isinstance(value, str):
        raise BadValue(WRONG_TYPE, f"expected text, got {type(value).__name__}")
    else:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise BadValue(INVALID_UTF8, f"lone surrogate at character {e.start}") from None
    if not value.strip():
        raise BadValue(EMPTY_TEXT, f"{value!r}")
    return value


def _visual(value: Any, base: str) -> Any:
    """A path / bytes / HF image dict / PIL image / array -> PIL image, array, or list of frame paths."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        value = value["bytes"] if value.get("bytes") is not None else value.get("path")
    if value is None:
        raise BadValue(MISSING_FIELD, "null")
    if isinstance(value, PILImage.Image | np.ndarray):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return _load_npy(io.BytesIO(data), "bytes") if data.startswith(_NPY_MAGIC) else _open_bytes(data, "bytes")
    if isinstance(value, (str, os.PathLike)):
        if not str(value):
            raise BadValue(MISSING_FIELD, "empty path")
        p = Path(value) if Path(value).is_absolute() else Path(base) / value
        if p.is_dir():
            return _frame_files(p)
        if not p.is_file():
            raise BadValue(MISSING_FILE, f"{value} (URLs are not downloaded)" if "://" in str(value) else str(p))
        return _load_npy(p, str(p)) if p.suffix.lower() == ".npy" else _open_file(p)
    if isinstance(value, (list, tuple)):
        try:
            a = np.asarray(value)
        except ValueError as e:
            raise BadValue(BAD_ARRAY, f"ragged nested lists: {e}") from None
        if a.dtype == object:
            raise BadValue(BAD_ARRAY, "nested lists with missing or non-numeric values")
        return a
    raise BadValue(WRONG_TYPE, f"expected a path, bytes, an image or an array, got {type(value).__name__}")


def _open_bytes(data: bytes, where: str) -> PILImage.Image:
    if not data:
        raise BadValue(UNREADABLE_IMAGE, f"{where}: 0 bytes")
    try:
        im = PILImage.open(io.BytesIO(data))
        im.load()
        return im
    except Exception as e:  # PIL raises many types for broken files
        raise BadValue(UNREADABLE_IMAGE, f"{where}: {type(e).__name__}: {e}") from None


def _open_file(p: Path) -> PILImage.Image:
    if not p.is_file():
        raise BadValue(MISSING_FILE, str(p))
    try:
        data = p.read_bytes()
    except OSError as e:
        raise BadValue(UNREADABLE_IMAGE, f"{p}: {e}") from None
    return _open_bytes(data, str(p))


def _load_npy(f: Any, where: str) -> np.ndarray:
    try:
        return np.load(f, allow_pickle=False, mmap_mode="r" if isinstance(f, Path) else None)
    except Exception as e:
        raise BadValue(BAD_ARRAY, f"{where}: cannot read .npy: {type(e).__name__}: {e}") from None


def _natural_key(name: str) -> list:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]


_IMAGE_EXTS = None


def _frame_files(folder: Path) -> list[Path]:
    global _IMAGE_EXTS
    if _IMAGE_EXTS is None:
        _IMAGE_EXTS = {e.lower() for e in PILImage.registered_extensions()}
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_EXTS), key=lambda p: _natural_key(p.name))
    if not files:
        raise BadValue(TOO_FEW_FRAMES, f"no frame images in {folder}")
    return files


def _frames(visual: Any, source: DataSource) -> Any:
    """Frame selection for a clip: every `frame_stride`-th frame, the first `num_frames` of them."""
    if isinstance(visual, PILImage.Image):
        visual = [visual]
    elif isinstance(visual, np.ndarray) and visual.ndim not in (3, 4):
        raise BadValue(BAD_ARRAY, f"shape {visual.shape}: a clip must be T x H x W x C or T x H x W")
    frames = visual[:: source.frame_stride]
    if source.num_frames is not None:
        if len(frames) < source.num_frames:
            detail = f"{len(frames)} frames (stride {source.frame_stride}), need {source.num_frames}"
            raise BadValue(TOO_FEW_FRAMES, detail)
        frames = frames[: source.num_frames]
    return np.asarray(frames) if isinstance(frames, np.ndarray) else frames


# -- opening sources ----------------------------------------------------------------------------


def _expand(patterns: list[str], root: Path | None) -> list[Path]:
    out: list[Path] = []
    for pat in patterns:
        full = str(root / pat) if root is not None and not Path(pat).is_absolute() else pat
        hits = sorted(glob.glob(full)) if glob.has_magic(full) else ([full] if Path(full).exists() else [])
        if not hits:
            raise FileNotFoundError(f"no files match {full!r}")
        out.extend(Path(h) for h in hits)
    return out


def _root(src: DataSource) -> Path | None:
    return Path(src.path) if src.path is not None and Path(src.path).is_dir() else None


def _table_files(src: DataSource) -> list[Path]:
    root = _root(src)
    if src.data_files:
        files = _expand(src.data_files, root)
    elif root is not None:
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in TABLE_BUILDERS)
        if not files:
            raise FileNotFoundError(f"no {sorted(TABLE_BUILDERS)} files in {root}")
    else:
        files = _expand([src.path], None)  # type: ignore[list-item]
    return files


def _builder(files: list[Path]) -> str:
    kinds = {TABLE_BUILDERS.get(p.suffix.lower()) for p in files}
    if None in kinds or len(kinds) != 1:
        raise ValueError(f"data files must all be json/jsonl or all parquet, got {sorted({p.suffix for p in files})}")
    return kinds.pop()  # type: ignore[return-value]


def _undecoded(ds: Any) -> Any:
    """The dataset with media decoding off, so broken images surface per record, not inside HF."""
    from datasets import IterableDataset

    if isinstance(ds, IterableDataset):
        return ds.cast(_no_decode(ds.features)) if ds.features is not None else ds
    for col, feat in ds.features.items():
        off = _no_decode(feat)
        if off is not feat:
            ds = ds.cast_column(col, off)
    return ds


def _no_decode(feat: Any) -> Any:
    from datasets import Audio, LargeList, List, Video
    from datasets import Image as HFImage

    if isinstance(feat, dict):
        new = {k: _no_decode(v) for k, v in feat.items()}
        return feat if all(new[k] is feat[k] for k in feat) else type(feat)(new)
    if isinstance(feat, (List, LargeList)):
        inner = _no_decode(feat.feature)
        if inner is feat.feature:
            return feat
        return List(inner, length=feat.length) if isinstance(feat, List) else LargeList(inner)
    if isinstance(feat, (HFImage, Video, Audio)) and feat.decode:  # media only (Json must stay decoded)
        return dataclasses.replace(feat, decode=False)
    return feat


def _load(builder: str, src: DataSource, **kwargs: Any) -> Any:
    from datasets import load_dataset

    kw = {} if src.streaming else {"cache_dir": src.cache_dir}
    try:
        ds = load_dataset(builder, split=src.split, streaming=src.streaming, **kw, **kwargs)
    except Exception as e:
        where = kwargs.get("data_dir") or kwargs.get("data_files")
        raise ValueError(f"dataset {src.name!r}: cannot load {builder} data from {where}: {e}") from e
    return _undecoded(ds)


class _Part(NamedTuple):
    base: str  # folder that relative paths start from
    rows: Any  # an HF dataset, or a list of row dicts
    where: str  # the files, for error messages


def _open(src: DataSource) -> list[_Part]:
    """The parts of a source: HF datasets (one per folder of data files), or the rows of a folder of clips."""
    if src.format == "imagefolder":
        if src.data_files:
            files = [str(p) for p in _expand(src.data_files, _root(src))]
            return [_Part("", _load("imagefolder", src, data_files={src.split: files}), str(files))]
        return [_Part(src.path, _load("imagefolder", src, data_dir=src.path), src.path)]  # type: ignore[arg-type]
    if src.format == "video" and src.path is not None and Path(src.path).is_dir() and not src.data_files:
        video, caption = src.column("video"), src.column("caption")
        if src.class_folders:  # path/<class>/<clip>: the label is the class folder's index
            rows = [
                {**r, src.column("label"): k}
                for k, sub in enumerate(_video_classes(src))
                for r in _clip_rows(Path(src.path) / sub, video, caption)
            ]
        else:
            rows = _clip_rows(Path(src.path), video, caption)
        return [_Part(src.path, rows, src.path)]
    files = _table_files(src)
    builder = _builder(files)
    groups: list[tuple[str, list[str]]] = []
    for f in files:  # consecutive files in one folder load together; relative paths start there
        if groups and str(f.parent) == groups[-1][0]:
            groups[-1][1].append(str(f))
        else:
            groups.append((str(f.parent), [str(f)]))
    return [_Part(base, _load(builder, src, data_files={src.split: g}), str(g)) for base, g in groups]


def _clip_rows(folder: Path, video: str, caption: str) -> list[dict[str, Any]]:
    """One row per clip (sub-folder of frames or .npy file), with its sidecar caption's bytes."""
    clips = [p for p in folder.iterdir() if p.is_dir() or p.suffix.lower() == ".npy"]
    rows = []
    for p in sorted(clips, key=lambda p: _natural_key(p.name)):
        row: dict[str, Any] = {video: str(p)}
        side = p.with_suffix(".txt") if p.is_file() else p.parent / f"{p.name}.txt"
        if side.is_file():
            row[caption] = side.read_bytes().rstrip(b"\r\n")
        rows.append(row)
    if not rows:
        raise FileNotFoundError(f"no clips (sub-folders of frames or .npy files) in {folder}")
    return rows


def _video_classes(src: DataSource) -> list[str]:
    """The class folders of a `class_folders` video directory, sorted by name."""
    names = sorted(p.name for p in Path(src.path).iterdir() if p.is_dir())  # type: ignore[arg-type]
    if not names:
        raise FileNotFoundError(f"no class folders in {src.path} (class_folders: path/<class>/<clip>)")
    return names


def _class_names(parts: list[_Part], src: DataSource) -> list[str] | None:
    if src.format == "video" and src.class_folders:
        return _video_classes(src)
    if src.format != "imagefolder":
        return None
    feats = getattr(parts[0].rows, "features", None) or {}
    feat = feats.get(src.column("label"))
    return list(feat.names) if hasattr(feat, "names") else None
