"""Cached latents: a dataset's images encoded once by an autoencoder, read back as Documents.

    unimodal latents encode --vae VAE_DIR --builtin shapes --task t2i --n 1000 --out data/shapes-latents
    data: {source: {format: latents, path: data/shapes-latents}}      # in a recipe

On disk, an output folder holds:

- ``manifest.json``: the format and version, what was encoded (the data config, the codec: VAE
  path, scaling factor, shift, posterior mean or sample), the shard size and storage dtype, and
  per finished shard its documents, images and skipped bad records; ``complete`` once every shard
  is written. Re-running the same command skips finished shards; a different config is refused.
- ``shard-00000.safetensors``: the latents of documents ``[0, shard_size)``, one tensor per image
  (``"<line>/<k>"``: the k-th image of the shard's line-th document; ``"<line>/<k>/flip"`` its
  mirror image with ``--flip``), each (T, C, h, w).
- ``shard-00000.jsonl``: one line per document: ``{"index": record index in the source,
  "label": int|null, "segments": [{"text": str, "ids"?: [int]} | {"image": key, "shape": [T,C,h,w],
  "flip"?: key}], "meta": {...}}`` (the document's JSON-able meta). Written after the tensors: a
  shard is finished when both files are there (each is written to a temporary name and renamed).

`encode_documents` writes such a folder; `LatentDataset` (via `load_latents`, or a data config's
``source: {format: latents, path: DIR}``) reads it as a sequence of Documents whose images are
``Image(latents, latent=True)``, so training on cached latents goes through the same collation.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..documents import Document, Image, Text

FORMAT = "unimodal-latents"
VERSION = 1
MANIFEST = "manifest.json"
SOURCE_KEYS = {"format", "path", "name", "flip"}
# manifest keys that say what was encoded: a re-run must match them to resume
IDENTITY = ("format", "version", "source", "codec", "shard_size", "save_dtype", "flip", "seed")
_SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class LatentsMismatch(ValueError):
    """The output folder holds latents written with a different configuration."""


def shard_name(k: int) -> str:
    return f"shard-{k:05d}"


def _jsonable(value: Any) -> Any:
    """`value` with numpy scalars/arrays and tuples made JSON types; None where it cannot be."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return None


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


# ------------------------------------------------------------------------------------- writing


@dataclass
class EncodeReport:
    """What `encode_documents` did."""

    out: Path
    documents: int = 0
    images: int = 0
    shards: int = 0
    written: list[int] = field(default_factory=list)
    skipped_shards: list[int] = field(default_factory=list)
    bad_records: int = 0
    latent_shapes: dict[str, int] = field(default_factory=dict)
    stats: dict[str, float | None] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        shapes = ", ".join(f"{s} x{n}" for s, n in sorted(self.latent_shapes.items())) or "none"
        lines = [
            f"latents in {self.out}: {self.documents} documents, {self.images} images in {self.shards} shards "
            f"({len(self.written)} written, {len(self.skipped_shards)} already done) in {self.seconds:.1f}s",
            f"latent shapes (T, C, h, w): {shapes}",
        ]
        if self.stats.get("std") is not None:
            lines.append(f"latent mean {self.stats['mean']:.4f}, std {self.stats['std']:.4f}")
        if self.bad_records:
            lines.append(f"bad records skipped: {self.bad_records}")
        return "\n".join(lines)


class _Batcher:
    """Buffers frames and encodes them in batches of one shape; latents by key, on the CPU."""

    def __init__(self, codec, batch_size: int, save_dtype: torch.dtype, sample: bool, seed: int) -> None:
        self.codec, self.batch_size, self.save_dtype = codec, batch_size, save_dtype
        self.sample, self.seed = sample, seed
        self.pending: list[tuple[str, torch.Tensor, list[int]]] = []
        self.frames = 0
        self.done: dict[str, torch.Tensor] = {}

    def add(self, key: str, x: torch.Tensor, seed_key: list[int]) -> None:
        self.pending.append((key, x, seed_key))
        self.frames += x.shape[0]
        if self.frames >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        groups: dict[tuple, list] = {}
        for item in self.pending:
            groups.setdefault(tuple(item[1].shape[1:]), []).append(item)
        for items in groups.values():
            x = torch.cat([t for _, t, _ in items])
            gens = None
            if self.sample:  # one generator per frame, seeded by (seed, record, image, frame): batch-independent
                gens = [
                    torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, *sk, f]).generate_state(1)[0]))
                    for _, t, sk in items
                    for f in range(t.shape[0])
                ]
            z = self.codec.encode(x, generator=gens, sample=self.sample).to("cpu", self.save_dtype)
            for (key, _, _), part in zip(items, z.split([t.shape[0] for _, t, _ in items]), strict=True):
                self.done[key] = part.contiguous()
        self.pending, self.frames = [], 0


def _items(docs: Any) -> tuple[int | None, Iterator[tuple[int, Callable[[], Document | None]]]]:
    """(length or None, iterator of (record index, loader)) for a sequence, a reader or a stream."""
    from .formats import DocumentReader

    if isinstance(docs, DocumentReader):
        if docs.source.streaming:
            return None, ((r.index, (lambda r=r: docs.decode(r))) for r in docs.records())
        return len(docs), ((i, (lambda i=i: docs.get(i))) for i in range(len(docs)))
    if isinstance(docs, Sequence) or (hasattr(docs, "__len__") and hasattr(docs, "__getitem__")):
        return len(docs), ((i, (lambda i=i: docs[i])) for i in range(len(docs)))
    return None, ((i, (lambda d=d: d)) for i, d in enumerate(docs))


def _shard_done(out: Path, k: int) -> bool:
    return (out / f"{shard_name(k)}.safetensors").is_file() and (out / f"{shard_name(k)}.jsonl").is_file()


def _shard_entry(out: Path, k: int) -> dict[str, Any]:
    """The manifest entry of a finished shard, read back from its JSONL."""
    lines = [json.loads(s) for s in (out / f"{shard_name(k)}.jsonl").read_text().splitlines() if s.strip()]
    shapes: dict[str, int] = {}
    for rec in lines:
        for seg in rec["segments"]:
            if "image" in seg:
                s = str(tuple(seg["shape"]))
                shapes[s] = shapes.get(s, 0) + 1
    first = lines[0]["index"] if lines else None
    from safetensors import safe_open

    with safe_open(str(out / f"{shard_name(k)}.safetensors"), framework="pt") as f:
        stats = json.loads((f.metadata() or {}).get("unimodal", "{}"))
    return {
        "name": shard_name(k),
        "documents": len(lines),
        "images": sum(shapes.values()),
        "first_index": first,
        "latent_shapes": shapes,
        "latent_values": stats.get("values", 0),
        "latent_sum": stats.get("sum", 0.0),
        "latent_sum_sq": stats.get("sum_sq", 0.0),
    }


def encode_documents(
    docs: Sequence[Document] | Iterable[Document],
    codec,
    out: str | Path,
    source: dict[str, Any] | None = None,
    shard_size: int = 1000,
    batch_size: int = 32,
    save_dtype: str = "float32",
    flip: bool = False,
    seed: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> EncodeReport:
    """Encode every image of `docs` with `codec` into shards under `out`; resumable and idempotent.

    `docs` is a built-in sequence, a `DocumentReader` (streaming too) or any iterable. Shard k
    holds records ``[k * shard_size, (k + 1) * shard_size)``; a finished shard is skipped, so an
    interrupted run continues and a repeated one writes nothing. `source` describes the data (it
    is recorded, and a re-run must give the same, as must the codec and the other settings;
    `overwrite=True` deletes the folder's shards and starts again). `flip` also stores each image's
    horizontal mirror. With a sampling codec, frame f of image k of record i is drawn with a
    generator seeded by (seed, i, k, f), so shards are reproducible.
    """
    t0 = time.perf_counter()
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size}, {batch_size}")
    if save_dtype not in _SAVE_DTYPES:
        raise ValueError(f"save_dtype must be one of {sorted(_SAVE_DTYPES)}, got {save_dtype!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = log or (lambda s: None)
    identity = {
        "format": FORMAT,
        "version": VERSION,
        "source": _jsonable(source or {}),
        "codec": _jsonable(codec.to_dict()),
        "shard_size": shard_size,
        "save_dtype": save_dtype,
        "flip": bool(flip),
        "seed": seed,
    }
    mpath = out / MANIFEST
    if mpath.is_file() and overwrite:
        for p in out.glob("shard-*"):
            p.unlink()
        mpath.unlink()
    elif mpath.is_file():
        old = json.loads(mpath.read_text())
        diff = [k for k in IDENTITY if old.get(k) != identity[k]]
        if diff:
            detail = "; ".join(f"{k}: {old.get(k)!r} -> {identity[k]!r}" for k in diff)
            raise LatentsMismatch(
                f"{out} holds latents written with another configuration ({detail}): "
                "use another output folder, or overwrite it"
            )
    elif any(out.glob("shard-*")):
        raise LatentsMismatch(f"{out} holds shards but no {MANIFEST}: use another output folder, or overwrite it")
    for p in out.glob(".shard-*.tmp"):  # left by a run killed while writing
        p.unlink()
    n, items = _items(docs)
    manifest = {**identity, "complete": False, "num_shards": math.ceil(n / shard_size) if n is not None else None}
    manifest.update(documents=0, bad_records=0, shards=[])
    names = getattr(docs, "class_names", None)  # an image folder's classes, by label
    if names:
        manifest["class_names"] = [str(c) for c in names]
    if not mpath.is_file():
        _write_atomic(mpath, _dumps(manifest).encode())
    report = EncodeReport(out)
    sample = bool(getattr(codec, "sample", False))
    for k, group in itertools.groupby(items, key=lambda item: item[0] // shard_size):
        if _shard_done(out, k):
            seen = sum(1 for _ in group)  # nothing is decoded
            report.skipped_shards.append(k)
        else:
            if not report.written:  # the manifest says "incomplete" while shards are being written
                _write_atomic(mpath, _dumps(manifest).encode())
            t = time.perf_counter()
            records = []
            seen = 0
            for index, load in group:
                seen += 1
                doc = load()
                if doc is not None:  # None: a bad record the reader's policy skips (and counts)
                    records.append((index, doc))
            _write_shard(out, k, records, codec, batch_size, _SAVE_DTYPES[save_dtype], sample, seed, flip)
            report.written.append(k)
        entry = _shard_entry(out, k)
        entry["bad_records"] = seen - entry["documents"]
        manifest["shards"].append(entry)
        manifest["documents"] += entry["documents"]
        manifest["bad_records"] += entry["bad_records"]
        if report.written and report.written[-1] == k:
            _write_atomic(mpath, _dumps(manifest).encode())
            rate = entry["images"] / max(time.perf_counter() - t, 1e-9)
            say(f"{entry['name']}: {entry['documents']} documents, {entry['images']} images ({rate:.0f} images/s)")
    manifest.update(complete=True, num_shards=len(manifest["shards"]), latent_stats=latent_stats(manifest["shards"]))
    text = _dumps(manifest)
    if mpath.read_text() != text:  # a finished folder is left untouched
        _write_atomic(mpath, text.encode())
    report.shards = manifest["num_shards"]
    report.documents = manifest["documents"]
    report.bad_records = manifest["bad_records"]
    for s in manifest["shards"]:
        report.images += s["images"]
        for shape, c in s["latent_shapes"].items():
            report.latent_shapes[shape] = report.latent_shapes.get(shape, 0) + c
    report.stats = manifest["latent_stats"]
    report.seconds = time.perf_counter() - t0
    return report


def latent_stats(shards: list[dict[str, Any]]) -> dict[str, float | None]:
    """Mean and standard deviation of every stored latent value (mirrored copies excluded): with
    the right scaling factor, a VAE's latents have a standard deviation near 1."""
    n = sum(s.get("latent_values", 0) for s in shards)
    if not n:
        return {"mean": None, "std": None}
    mean = sum(s["latent_sum"] for s in shards) / n
    var = max(sum(s["latent_sum_sq"] for s in shards) / n - mean * mean, 0.0)
    return {"mean": round(mean, 6), "std": round(math.sqrt(var), 6)}


def _write_shard(
    out: Path,
    k: int,
    records: list[tuple[int, Document]],
    codec,
    batch_size: int,
    save_dtype: torch.dtype,
    sample: bool,
    seed: int,
    flip: bool,
) -> None:
    """Encode one shard's documents and write its tensors, then its JSONL (the completion mark)."""
    from safetensors.torch import save

    batcher = _Batcher(codec, batch_size, save_dtype, sample, seed)
    lines = []
    for line, (index, doc) in enumerate(records):
        segments: list[dict[str, Any]] = []
        k_img = 0
        for seg in doc.segments:
            if isinstance(seg, Text):
                s: dict[str, Any] = {"text": seg.text}
                if seg.ids is not None:
                    s["ids"] = [int(i) for i in seg.ids]
                segments.append(s)
                continue
            if seg.latent:
                raise ValueError(f"record {index}: its image {k_img} is already latent; encode pixel datasets only")
            x = seg.to_tensor()
            key = f"{line}/{k_img}"
            batcher.add(key, x, [index, k_img])
            s = {"image": key, "shape": list(codec.latent_shape(x.shape))}
            if flip:
                batcher.add(f"{key}/flip", x.flip(-1), [index, k_img, 1])
                s["flip"] = f"{key}/flip"
            segments.append(s)
            k_img += 1
        label = None if doc.label is None else int(doc.label)
        lines.append({"index": int(index), "label": label, "segments": segments, "meta": _jsonable(dict(doc.meta))})
    batcher.flush()
    for rec in lines:
        for s in rec["segments"]:
            if "image" in s:
                s["shape"] = list(batcher.done[s["image"]].shape)
    values = [t.double() for key, t in batcher.done.items() if not key.endswith("/flip")]
    stats = {
        "format": FORMAT,
        "version": VERSION,
        "values": sum(t.numel() for t in values),
        "sum": float(sum(t.sum() for t in values)),
        "sum_sq": float(sum(t.square().sum() for t in values)),
    }
    # one metadata key (the header's key order is not stable), its JSON with sorted keys: identical bytes on a re-run
    data = save(batcher.done, metadata={"unimodal": json.dumps(stats, sort_keys=True)})
    _write_atomic(out / f"{shard_name(k)}.safetensors", data)
    text = "".join(json.dumps(rec, sort_keys=True) + "\n" for rec in lines)
    _write_atomic(out / f"{shard_name(k)}.jsonl", text.encode())


# ------------------------------------------------------------------------------------- reading


class LatentDataset(Sequence[Document]):
    """The documents of a cached-latents folder, in record order; images are `Image(latent=True)`.

    With `flip=True` (the folder must have been encoded with `--flip`) the dataset is twice as
    long: documents ``[n, 2n)`` are documents ``[0, n)`` with their mirrored latents, the
    horizontal-flip augmentation of the paper as fixed copies. Tensors are read lazily from
    memory-mapped shards (at most `max_open` open at a time).
    """

    def __init__(self, path: str | Path, flip: bool = False, name: str | None = None, max_open: int = 64) -> None:
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise FileNotFoundError(f"{self.path}: no {MANIFEST} (write cached latents with `unimodal latents encode`)")
        self.manifest = json.loads(mpath.read_text())
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{mpath}: not a cached-latents manifest (format {self.manifest.get('format')!r})")
        if self.manifest.get("version") != VERSION:
            raise ValueError(f"{mpath}: version {self.manifest.get('version')}, this library reads {VERSION}")
        if not self.manifest.get("complete"):
            done = len(self.manifest.get("shards", []))
            raise ValueError(
                f"{self.path}: the latents are incomplete ({done} of {self.manifest.get('num_shards')} shards): "
                "run the same `unimodal latents encode` command again to finish them"
            )
        if flip and not self.manifest.get("flip"):
            raise ValueError(f"{self.path}: flip=True needs latents encoded with --flip")
        self.flip = flip
        self.name = name or self.path.name
        self.shards = [s["name"] for s in self.manifest["shards"]]
        self.class_names: list[str] | None = self.manifest.get("class_names")
        self._offsets = np.cumsum([0] + [s["documents"] for s in self.manifest["shards"]]).tolist()
        self._lines: dict[int, list[dict[str, Any]]] = {}
        self._open: OrderedDict[int, Any] = OrderedDict()
        self._max_open = max_open

    @classmethod
    def from_source(cls, source: dict[str, Any]) -> LatentDataset:
        """From a data config's ``source: {format: latents, path: DIR, flip: false, name: ...}``."""
        unknown = sorted(set(source) - SOURCE_KEYS)
        if unknown:
            raise ValueError(f"unknown keys {unknown} for a 'latents' source; known keys are {sorted(SOURCE_KEYS)}")
        if source.get("format") != "latents":
            raise ValueError(f"a cached-latents source has format 'latents', got {source.get('format')!r}")
        if not source.get("path"):
            raise ValueError("a 'latents' source needs `path`: the folder `unimodal latents encode` wrote")
        return cls(source["path"], flip=bool(source.get("flip", False)), name=source.get("name"))

    @property
    def codec(self) -> dict[str, Any]:
        """The codec the latents were made with, as the manifest records it."""
        return self.manifest["codec"]

    def latent_shapes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.manifest["shards"]:
            for shape, c in s["latent_shapes"].items():
                out[shape] = out.get(shape, 0) + c
        return out

    def __len__(self) -> int:
        return self._offsets[-1] * (2 if self.flip else 1)

    def __repr__(self) -> str:
        return f"LatentDataset({str(self.path)!r}, documents={len(self)}, flip={self.flip})"

    def _shard_lines(self, k: int) -> list[dict[str, Any]]:
        if k not in self._lines:
            p = self.path / f"{self.shards[k]}.jsonl"
            self._lines[k] = [json.loads(s) for s in p.read_text().splitlines() if s.strip()]
        return self._lines[k]

    def _tensors(self, k: int):
        from safetensors import safe_open

        if k in self._open:
            self._open.move_to_end(k)
            return self._open[k]
        f = safe_open(str(self.path / f"{self.shards[k]}.safetensors"), framework="pt")
        self._open[k] = f
        if len(self._open) > self._max_open:
            self._open.popitem(last=False)
        return f

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"latents {self.name!r}: document {i} out of range for {n}")
        i %= n
        base = self._offsets[-1]
        mirrored = i >= base
        j = i - base if mirrored else i
        k = int(np.searchsorted(self._offsets, j, side="right")) - 1
        rec = self._shard_lines(k)[j - self._offsets[k]]
        f = self._tensors(k)
        segments: list = []
        for s in rec["segments"]:
            if "image" in s:
                segments.append(Image(f.get_tensor(s["flip"] if mirrored else s["image"]).float(), latent=True))
            else:
                segments.append(Text(s["text"], ids=s.get("ids")))
        meta = {**rec.get("meta", {}), "dataset": self.name, "index": i, "source_index": rec["index"]}
        if mirrored:
            meta["flipped"] = True
        return Document(segments, label=rec.get("label"), meta=meta)


def codec_of(path: str | Path, **kwargs):
    """The `VAECodec` a cached-latents folder was encoded with (its VAE folder, scaling factor and
    shift as the manifest records them); `kwargs` (device, dtype, ...) go to `VAECodec`."""
    from ..codec import VAECodec

    mpath = Path(path) / MANIFEST
    if not mpath.is_file():
        raise FileNotFoundError(f"{path}: no {MANIFEST} (not a cached-latents folder)")
    spec = json.loads(mpath.read_text()).get("codec", {})
    if spec.get("type") != "vae" or not spec.get("path"):
        raise ValueError(f"{path}: the manifest names no VAE folder ({spec})")
    return VAECodec.from_pretrained(
        spec["path"],
        subfolder=spec.get("subfolder"),
        scaling_factor=spec.get("scaling_factor"),
        shift_factor=spec.get("shift_factor"),
        **kwargs,
    )


def load_latents(source: str | Path | dict[str, Any], **kwargs) -> LatentDataset:
    """A cached-latents folder (or its data-config source dict) as a `LatentDataset`."""
    if isinstance(source, dict):
        return LatentDataset.from_source(source)
    return LatentDataset(source, **kwargs)


__all__ = [
    "FORMAT",
    "MANIFEST",
    "VERSION",
    "EncodeReport",
    "LatentDataset",
    "LatentsMismatch",
    "codec_of",
    "encode_documents",
    "load_latents",
]
