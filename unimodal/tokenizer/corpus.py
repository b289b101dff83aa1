"""Training corpora: `iter_corpus` streams the texts a `CorpusSpec` names, with clear errors."""

from __future__ import annotations

import glob
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import CorpusError
from .spec import CorpusSpec

_TEXT_FORMATS = ("json", "jsonl", "csv", "text")  # checked for UTF-8 before `datasets` reads them


def iter_corpus(corpus: CorpusSpec) -> Iterator[str]:
    """Yield the texts of a corpus (lazily, so large files are streamed), with clear errors."""
    if corpus.kind == "text_file":
        assert corpus.path is not None
        yield from _utf8_lines(corpus.path)
    elif corpus.kind == "datasets":
        yield from _datasets_texts(corpus)
    elif corpus.kind == "builtin":
        yield from _builtin_texts(corpus)
    else:  # pragma: no cover - rejected by the spec
        raise CorpusError(f"unknown corpus kind {corpus.kind!r}")


def _utf8_lines(path: Path) -> Iterator[str]:
    """Yield the lines of a UTF-8 file; invalid bytes raise a CorpusError naming file, line and byte offset."""
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(
                    f"{path}: not valid UTF-8 at byte offset {offset + e.start} (line {lineno}): {e.reason}"
                ) from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            offset += len(raw)
            yield line.rstrip("\r\n")


def _resolve_data_files(files: Sequence[Path]) -> list[str]:
    """Expand globs and check every named file exists."""
    out: list[str] = []
    for f in files:
        if any(ch in str(f) for ch in "*?["):
            matches = sorted(glob.glob(str(f), recursive=True))
            if not matches:
                raise FileNotFoundError(f"corpus data_files pattern matched no files: {f}")
            out.extend(matches)
        elif not f.is_file():
            raise FileNotFoundError(f"corpus data file not found: {f}")
        else:
            out.append(str(f))
    return out


def _datasets_texts(c: CorpusSpec) -> Iterator[str]:
    """Stream one column of local files through HF `datasets` (no cache written, nothing downloaded)."""
    files = _resolve_data_files(c.data_files)
    if c.format in _TEXT_FORMATS:
        for f in files:
            for _ in _utf8_lines(Path(f)):
                pass
    import datasets

    builder = "json" if c.format == "jsonl" else c.format
    what = f"{c.format} files {files}"
    try:
        ds = datasets.load_dataset(builder, data_files=files, split="train", streaming=True)
        columns = list(ds.features) if ds.features is not None else None
        rows = iter(ds)
        first = next(rows, None)
    except Exception as e:  # datasets raises many types for malformed files
        raise CorpusError(f"could not read {what}: {type(e).__name__}: {e}") from e
    if first is None:
        return
    if columns is None:
        columns = list(first)
    if c.column not in columns:
        raise CorpusError(f"{what}: no column {c.column!r} (columns: {', '.join(map(str, columns))})")
    index = 0
    row: Mapping[str, Any] | None = first
    while row is not None:
        yield from _cell_texts(row.get(c.column), what, index, c.column)
        index += 1
        try:
            row = next(rows, None)
        except Exception as e:
            raise CorpusError(f"could not read {what} at row {index}: {type(e).__name__}: {e}") from e


def _cell_texts(value: Any, what: str, index: int, column: str) -> Iterator[str]:
    """Strings of one cell: a string, or a list of strings with empty (None) slots as in interleaved data."""
    if value is None:
        return
    if isinstance(value, str):
        yield value
        return
    if isinstance(value, (list, tuple)):
        for j, v in enumerate(value):
            if v is None:
                continue
            if not isinstance(v, str):
                raise CorpusError(f"{what}: row {index}, column {column!r}[{j}]: expected text, got {type(v).__name__}")
            yield v
        return
    raise CorpusError(f"{what}: row {index}, column {column!r}: expected text, got {type(value).__name__}")


def _builtin_texts(c: CorpusSpec) -> Iterator[str]:
    """The text segments of a built-in dataset's documents (`unimodal.data.load_builtin`)."""
    try:
        from unimodal.data import load_builtin
    except ImportError as e:
        raise CorpusError(
            f"builtin corpus {c.name!r} needs unimodal.data.load_builtin, which is unavailable: {e}"
        ) from e
    from unimodal.documents import Text

    kwargs: dict[str, Any] = {"seed": c.seed}
    for key in ("split", "task", "n"):
        if getattr(c, key) is not None:
            kwargs[key] = getattr(c, key)
    for doc in load_builtin(c.name, **kwargs):
        for seg in doc.segments:
            if isinstance(seg, Text) and seg.text:
                yield seg.text


def describe_corpus(c: CorpusSpec) -> str:
    """A corpus in words, for error messages."""
    if c.kind == "text_file":
        return f"text file {c.path}"
    if c.kind == "datasets":
        return f"{c.format} column {c.column!r} of {[str(f) for f in c.data_files]}"
    return f"builtin {c.name!r} (task={c.task}, n={c.n}, seed={c.seed})"
