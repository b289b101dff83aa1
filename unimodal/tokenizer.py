"""Tokenizers: one interface over SentencePiece models and HF `tokenizers` files, trained from YAML specs.

A `Tokenizer` turns text into ids and back and knows the ids of the special tokens the layout
needs (`pad bos eos boi eoi null`). Those ids are always looked up in the tokenizer itself by the
special strings, never taken from constants, so any tokenizer (ours or one a user brings) works.

Two backends share the interface:
  - SentencePiece model files (`tokenizer.model`): what `train_tokenizer` produces;
  - HF `tokenizers` files (`tokenizer.json`): so users can bring an existing fast tokenizer.

`Tokenizer.save(dir)` writes the backend file plus `unimodal_tokenizer.json` (backend, special
strings and their ids); `Tokenizer.load(dir)` reads them back and checks the ids still agree.

A `TokenizerSpec` (YAML in `tokenizers_cfg/`, see its README) says how to train one:
algorithm, vocabulary size, normalisation, special strings, corpus and output directory.
`train_from_config(path)` is what `unimodal tokenizer train --config PATH` runs.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPECIAL_ROLES: tuple[str, ...] = ("pad", "bos", "eos", "boi", "eoi", "null")
"""Roles of the special tokens: padding, begin/end of sequence, begin/end of image, null prompt (guidance)."""

DEFAULT_SPECIALS: dict[str, str] = {
    "pad": "<pad>",
    "bos": "<bos>",
    "eos": "<eos>",
    "boi": "<boi>",
    "eoi": "<eoi>",
    "null": "<null>",
}
DEFAULT_UNK = "<unk>"  # SentencePiece needs an unknown piece; byte fallback means it is (almost) never produced

META_FILE = "unimodal_tokenizer.json"
ALGORITHMS = ("bpe", "unigram", "word", "char")
NORMALIZATIONS = ("nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf", "identity")
CORPUS_KINDS = ("text_file", "datasets", "builtin")
CORPUS_FORMATS = ("json", "jsonl", "parquet", "csv", "text")
_TEXT_FORMATS = ("json", "jsonl", "csv", "text")  # checked for UTF-8 before `datasets` reads them
_SP_MAX_SENTENCE_BYTES = 1 << 16  # SentencePiece silently drops longer sentences (default 4192 bytes)


class TokenizerError(ValueError):
    """A tokenizer is unusable (missing special token, unknown id, broken saved directory)."""


class SpecError(TokenizerError):
    """A tokenizer spec is invalid; the message names the file and the key."""


class CorpusError(TokenizerError):
    """A training corpus cannot be read (invalid UTF-8, empty, missing column, ...)."""


# --------------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------------

_CORPUS_KEYS: dict[str, tuple[str, ...]] = {
    "text_file": ("kind", "path"),
    "datasets": ("kind", "data_files", "format", "column"),
    "builtin": ("kind", "name", "task", "n", "seed", "split"),
}


@dataclass
class CorpusSpec:
    """Where training text comes from.

    kind `text_file`: `path`, one sentence per non-blank line (UTF-8).
    kind `datasets`: `data_files` (local paths or globs), `format` (json, jsonl, parquet, csv, text) and
    `column` (default "text"), read with HF `datasets.load_dataset`; list-valued cells contribute each string.
    kind `builtin`: `name` (shapes | digits), optional `task`, `n`, `seed`, `split`, passed to
    `unimodal.data.load_builtin`; the text of every `Text` segment is used.
    Relative paths are resolved against `base_dir` (the spec file's folder).
    """

    kind: str
    path: Path | None = None
    data_files: list[Path] = field(default_factory=list)
    format: str | None = None
    column: str = "text"
    name: str | None = None
    task: str | None = None
    n: int | None = None
    seed: int = 0
    split: str | None = None


@dataclass
class TokenizerSpec:
    """How to train a tokenizer (see tokenizers_cfg/README.md); validated on construction.

    `source` is the YAML file it came from (used in error messages; relative paths in `corpus`
    and `output` were resolved against its folder).
    """

    name: str
    algorithm: str
    vocab_size: int
    normalization: str = "nmt_nfkc"
    lowercase: bool = False
    byte_fallback: bool = True
    character_coverage: float = 1.0
    special_tokens: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SPECIALS))
    unk_token: str = DEFAULT_UNK
    corpus: CorpusSpec | None = None
    output: Path | None = None
    source: Path | None = None

    def __post_init__(self) -> None:
        where = str(self.source) if self.source else "<spec>"
        if self.algorithm not in ALGORITHMS:
            raise SpecError(f"{where}: key 'algorithm' must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        if self.normalization not in NORMALIZATIONS:
            raise SpecError(
                f"{where}: key 'normalization' must be one of {', '.join(NORMALIZATIONS)}, got {self.normalization!r}"
            )
        if isinstance(self.vocab_size, bool) or not isinstance(self.vocab_size, int) or self.vocab_size < 8:
            raise SpecError(f"{where}: key 'vocab_size' must be an integer >= 8, got {self.vocab_size!r}")
        if not 0.0 < float(self.character_coverage) <= 1.0:
            raise SpecError(f"{where}: key 'character_coverage' must be in (0, 1], got {self.character_coverage!r}")
        for role in self.special_tokens:
            if role not in SPECIAL_ROLES:
                raise SpecError(
                    f"{where}: unknown key 'special_tokens.{role}' (roles: {', '.join(SPECIAL_ROLES)}, unk)"
                )
        specials = {**DEFAULT_SPECIALS, **self.special_tokens}
        for role, s in [*specials.items(), ("unk", self.unk_token)]:
            if not isinstance(s, str) or not s or any(ch.isspace() for ch in s):
                raise SpecError(f"{where}: key 'special_tokens.{role}' must be a non-empty string without spaces")
        strings = [*specials.values(), self.unk_token]
        if len(set(strings)) != len(strings):
            raise SpecError(f"{where}: key 'special_tokens' has repeated strings {strings}; each role needs its own")
        self.special_tokens = specials

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> TokenizerSpec:
        """Read and validate a spec file; relative paths inside resolve against the file's folder."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer spec not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise SpecError(f"{path}: not a readable YAML file: {e}") from e
        return cls.from_dict(data, source=path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | os.PathLike | None = None) -> TokenizerSpec:
        """Build a spec from a mapping (as read from YAML), rejecting unknown or ill-typed keys.

        Relative paths resolve against the folder of `source`, else the current directory.
        """
        src = Path(source) if source is not None else None
        where = str(src) if src else "<spec>"
        base = src.resolve().parent if src else Path.cwd()
        if not isinstance(data, Mapping):
            raise SpecError(f"{where}: a tokenizer spec must be a mapping of keys, got {type(data).__name__}")
        allowed = {
            "name": str,
            "algorithm": str,
            "vocab_size": int,
            "normalization": str,
            "lowercase": bool,
            "byte_fallback": bool,
            "character_coverage": float,
            "special_tokens": dict,
            "corpus": dict,
            "output": str,
        }
        for key in data:
            if key not in allowed:
                raise SpecError(f"{where}: unknown key {key!r} (allowed: {', '.join(allowed)})")
        for key in ("name", "algorithm", "vocab_size"):
            if key not in data:
                raise SpecError(f"{where}: missing required key {key!r}")
        kw: dict[str, Any] = {k: _typed(where, k, v, allowed[k]) for k, v in data.items()}

        # YAML reads a bare `null:` key as None; that key means the null-prompt role.
        specials = {("null" if r is None else r): v for r, v in (kw.pop("special_tokens", None) or {}).items()}
        for role, s in specials.items():
            if role not in (*SPECIAL_ROLES, "unk"):
                raise SpecError(
                    f"{where}: unknown key 'special_tokens.{role}' (roles: {', '.join(SPECIAL_ROLES)}, unk)"
                )
            _typed(where, f"special_tokens.{role}", s, str)
        unk = specials.pop("unk", DEFAULT_UNK)
        if "corpus" in kw:
            kw["corpus"] = _corpus_from_dict(kw["corpus"], where, base)
        output = kw.pop("output", None)
        out_path = base / (output if output is not None else kw["name"])
        return cls(**kw, special_tokens=specials, unk_token=unk, output=out_path, source=src)


def _typed(where: str, key: str, value: Any, typ: type) -> Any:
    """Check one spec value's type (bool is not an int; an int is a valid float)."""
    ok = isinstance(value, typ) and not (typ in (int, float) and isinstance(value, bool))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        raise SpecError(f"{where}: key {key!r} must be {typ.__name__}, got {type(value).__name__} ({value!r})")
    return value


def _corpus_from_dict(d: Mapping[str, Any], where: str, base: Path) -> CorpusSpec:
    """Validate the `corpus` mapping for its kind and resolve its paths against `base`."""
    kind = d.get("kind")
    if kind not in CORPUS_KINDS:
        raise SpecError(f"{where}: key 'corpus.kind' must be one of {', '.join(CORPUS_KINDS)}, got {kind!r}")
    for key in d:
        if key not in _CORPUS_KEYS[kind]:
            raise SpecError(
                f"{where}: unknown key 'corpus.{key}' for kind {kind} (allowed: {', '.join(_CORPUS_KEYS[kind])})"
            )

    def need(key: str, typ: type) -> Any:
        if key not in d:
            raise SpecError(f"{where}: missing required key 'corpus.{key}' for kind {kind}")
        return _typed(where, f"corpus.{key}", d[key], typ)

    if kind == "text_file":
        return CorpusSpec(kind=kind, path=base / need("path", str))
    if kind == "datasets":
        if "data_files" not in d:
            raise SpecError(f"{where}: missing required key 'corpus.data_files' for kind {kind}")
        files = d["data_files"]
        files = [files] if isinstance(files, str) else files
        if not isinstance(files, list):
            raise SpecError(
                f"{where}: key 'corpus.data_files' must be a str or a list of str, got {type(files).__name__}"
            )
        if not files:
            raise SpecError(f"{where}: key 'corpus.data_files' must name at least one file")
        for i, f in enumerate(files):
            _typed(where, f"corpus.data_files[{i}]", f, str)
        fmt = need("format", str)
        if fmt not in CORPUS_FORMATS:
            raise SpecError(f"{where}: key 'corpus.format' must be one of {', '.join(CORPUS_FORMATS)}, got {fmt!r}")
        column = _typed(where, "corpus.column", d.get("column", "text"), str)
        return CorpusSpec(kind=kind, data_files=[base / f for f in files], format=fmt, column=column)
    c = CorpusSpec(kind=kind, name=need("name", str))
    for key, typ in (("task", str), ("n", int), ("seed", int), ("split", str)):
        if key in d:
            setattr(c, key, _typed(where, f"corpus.{key}", d[key], typ))
    return c


# --------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Tokenizer interface and backends
# --------------------------------------------------------------------------------------------


class Tokenizer(ABC):
    """Text <-> ids with named special tokens; see the module docstring for the backends.

    `encode` adds no special tokens and never produces them from text; `decode` drops them.
    """

    backend: str = ""
    filename: str = ""

    def __init__(self, special_tokens: Mapping[str, str] | None = None, lowercase: bool = False) -> None:
        strings = {**DEFAULT_SPECIALS, **(special_tokens or {})}
        unknown = set(strings) - set(SPECIAL_ROLES)
        if unknown:
            raise TokenizerError(f"unknown special-token roles {sorted(unknown)} (roles: {', '.join(SPECIAL_ROLES)})")
        self.special_tokens: dict[str, str] = {r: strings[r] for r in SPECIAL_ROLES}
        self.lowercase = bool(lowercase)
        self._specials: dict[str, int] = {}

    def _resolve_specials(self) -> None:
        """Look every special string up in the vocabulary; a missing or shared one is an error."""
        ids: dict[str, int] = {}
        for role, s in self.special_tokens.items():
            i = self.token_to_id(s)
            if i is None:
                raise TokenizerError(
                    f"{self.backend} tokenizer has no special token {s!r} (role {role!r}); "
                    + (
                        "pass add_special_tokens=True to append it"
                        if self.backend == "hf"
                        else "retrain it with these special tokens"
                    )
                    + f", or map the role to a token it has via specials={{'{role}': ...}}"
                )
            ids[role] = i
        if len(set(ids.values())) != len(ids):
            raise TokenizerError(f"special tokens must have distinct ids, got {ids}")
        self._specials = ids
        self._special_ids = frozenset(ids.values())

    # -- backend-specific ------------------------------------------------------------------
    @abstractmethod
    def _encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def _decode(self, ids: list[int]) -> str: ...

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids (embedding rows the model needs), added/special tokens included."""

    @abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary entry, or None if it has none."""

    @abstractmethod
    def id_to_token(self, i: int) -> str:
        """The vocabulary entry of an id."""

    @abstractmethod
    def _write(self, path: Path) -> None: ...

    # -- shared ----------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Ids of `text`, with no special tokens added (the layout adds bos/eos/boi/eoi itself)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        return self._encode(text.lower() if self.lowercase else text)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special tokens are dropped, an id outside the vocabulary is an error."""
        ids = [int(i) for i in ids]
        n = self.vocab_size
        for i in ids:
            if not 0 <= i < n:
                raise TokenizerError(f"id {i} is outside the vocabulary (size {n})")
        return self._decode([i for i in ids if i not in self._special_ids])

    @property
    def specials(self) -> dict[str, int]:
        """Role -> id for pad, bos, eos, boi, eoi, null (looked up in this tokenizer)."""
        return dict(self._specials)

    @property
    def pad_id(self) -> int:
        """Id of the padding token."""
        return self._specials["pad"]

    @property
    def bos_id(self) -> int:
        """Id of the begin-of-sequence token."""
        return self._specials["bos"]

    @property
    def eos_id(self) -> int:
        """Id of the end-of-sequence token."""
        return self._specials["eos"]

    @property
    def boi_id(self) -> int:
        """Id of the begin-of-image token."""
        return self._specials["boi"]

    @property
    def eoi_id(self) -> int:
        """Id of the end-of-image token."""
        return self._specials["eoi"]

    @property
    def null_id(self) -> int:
        """Id of the null-prompt (classifier-free guidance) token."""
        return self._specials["null"]

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the backend file and `unimodal_tokenizer.json` into `directory` (created); returns it."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self._write(d / self.filename)
        meta = {
            "format": "unimodal-tokenizer",
            "version": 1,
            "backend": self.backend,
            "file": self.filename,
            "special_tokens": self.special_tokens,
            "special_ids": self.specials,
            "lowercase": self.lowercase,
            "vocab_size": self.vocab_size,
        }
        (d / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return d

    @staticmethod
    def load(directory: str | os.PathLike) -> Tokenizer:
        """Load what `save` wrote; the saved special ids must match the backend file's."""
        d = Path(directory)
        meta_path = d / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"no {META_FILE} in {d}; for a bare tokenizer.json or .model use "
                "Tokenizer.from_file(path, specials=...)"
            )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            backend, file = meta["backend"], meta["file"]
            strings, lowercase = meta["special_tokens"], bool(meta.get("lowercase", False))
        except (ValueError, KeyError, TypeError) as e:
            raise TokenizerError(f"{meta_path}: not a valid {META_FILE}: {e!r}") from e
        cls = _BACKENDS.get(backend)
        if cls is None:
            raise TokenizerError(f"{meta_path}: unknown backend {backend!r} (known: {', '.join(_BACKENDS)})")
        tok = cls.from_path(d / file, special_tokens=strings, lowercase=lowercase)
        saved = meta.get("special_ids")
        if saved is not None and saved != tok.specials:
            raise TokenizerError(f"{meta_path}: saved special ids {saved} disagree with {file}: {tok.specials}")
        return tok

    @staticmethod
    def from_file(
        path: str | os.PathLike,
        specials: Mapping[str, str] | None = None,
        add_special_tokens: bool = False,
        lowercase: bool = False,
    ) -> Tokenizer:
        """Bring your own tokenizer: an HF `tokenizer.json` or a SentencePiece `.model`.

        `specials` maps roles to the tokenizer's own strings (defaults: `<pad> <bos> <eos> <boi> <eoi> <null>`).
        `add_special_tokens=True` appends missing ones (HF backend only), growing `vocab_size`.
        """
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {p}")
        with open(p, "rb") as f:
            is_json = p.suffix == ".json" or f.read(64).lstrip().startswith(b"{")
        if is_json:
            return HFTokenizer.from_path(
                p, special_tokens=specials, lowercase=lowercase, add_missing=add_special_tokens
            )
        if add_special_tokens:
            raise TokenizerError(
                f"{p}: add_special_tokens is only supported for tokenizer.json; retrain the SentencePiece model "
                "with these special tokens (train_tokenizer) instead"
            )
        return SentencePieceTokenizer.from_path(p, special_tokens=specials, lowercase=lowercase)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, specials={self.specials})"


class SentencePieceTokenizer(Tokenizer):
    """Backend over a SentencePiece model (what `train_tokenizer` produces)."""

    backend = "sentencepiece"
    filename = "tokenizer.model"

    def __init__(
        self, model_proto: bytes, special_tokens: Mapping[str, str] | None = None, lowercase: bool = False
    ) -> None:
        import sentencepiece as spm

        super().__init__(special_tokens, lowercase)
        self._proto = bytes(model_proto)
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        except Exception as e:
            raise TokenizerError(f"not a valid SentencePiece model: {e}") from e
        self._resolve_specials()

    @classmethod
    def from_path(
        cls, path: Path, special_tokens: Mapping[str, str] | None = None, lowercase: bool = False
    ) -> SentencePieceTokenizer:
        """Load a `.model` file."""
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            return cls(path.read_bytes(), special_tokens, lowercase)
        except TokenizerError as e:
            raise TokenizerError(f"{path}: {e}") from None

    def _encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text, out_type=int))

    def _decode(self, ids: list[int]) -> str:
        # Byte-fallback pieces of the word-boundary mark (word models) decode literally: map them as
        # SentencePiece would, dropping the leading dummy-prefix mark and turning the rest into spaces.
        text = self._sp.decode(ids)
        return text.removeprefix("\u2581").replace("\u2581", " ")

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    def token_to_id(self, token: str) -> int | None:
        i = int(self._sp.piece_to_id(token))
        if i == self._sp.unk_id() and token != self._sp.id_to_piece(i):
            return None
        return i

    def id_to_token(self, i: int) -> str:
        if not 0 <= i < self.vocab_size:
            raise TokenizerError(f"id {i} is outside the vocabulary (size {self.vocab_size})")
        return self._sp.id_to_piece(i)

    def _write(self, path: Path) -> None:
        path.write_bytes(self._proto)


class HFTokenizer(Tokenizer):
    """Backend over an HF `tokenizers` fast tokenizer (tokenizer.json)."""

    backend = "hf"
    filename = "tokenizer.json"

    def __init__(
        self,
        tokenizer: Any,
        special_tokens: Mapping[str, str] | None = None,
        lowercase: bool = False,
        add_missing: bool = False,
    ) -> None:
        from tokenizers import AddedToken

        super().__init__(special_tokens, lowercase)
        self._tok = tokenizer
        if add_missing:
            missing = [s for s in self.special_tokens.values() if tokenizer.token_to_id(s) is None]
            tokenizer.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in missing])
        # Text that happens to contain a special string encodes as plain text, never as the special id.
        tokenizer.encode_special_tokens = True
        self._resolve_specials()

    @classmethod
    def from_path(
        cls,
        path: Path,
        special_tokens: Mapping[str, str] | None = None,
        lowercase: bool = False,
        add_missing: bool = False,
    ) -> HFTokenizer:
        """Load a `tokenizer.json` file."""
        from tokenizers import Tokenizer as _HF

        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            tok = _HF.from_file(str(path))
        except Exception as e:
            raise TokenizerError(f"{path}: not a valid tokenizer.json: {e}") from e
        try:
            return cls(tok, special_tokens, lowercase, add_missing)
        except TokenizerError as e:
            raise TokenizerError(f"{path}: {e}") from None

    def _encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str:
        t = self._tok.id_to_token(i)
        if t is None:
            raise TokenizerError(f"id {i} is outside the vocabulary (size {self.vocab_size})")
        return t

    def _write(self, path: Path) -> None:
        self._tok.save(str(path))


_BACKENDS: dict[str, Any] = {"sentencepiece": SentencePieceTokenizer, "hf": HFTokenizer}


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def train_tokenizer(spec: TokenizerSpec, texts: Iterable[str] | None = None) -> SentencePieceTokenizer:
    """Train a SentencePiece tokenizer in memory from `texts` (default: the spec's corpus).

    Deterministic (one thread, fixed seed): the same corpus and spec give the same model. Each
    non-blank line is a sentence. pad/bos/eos are SentencePiece's own pieces, boi/eoi/null are control
    symbols (never produced from text); byte fallback keeps any text encodable; the vocabulary
    size is an upper bound so tiny corpora still train.
    """
    import sentencepiece as spm

    if texts is None:
        if spec.corpus is None:
            raise SpecError(f"{spec.source or '<spec>'}: no 'corpus' given and no texts passed to train_tokenizer")
        texts = iter_corpus(spec.corpus)
        what = _describe(spec.corpus)
    else:
        what = "the given texts"
    failure: list[BaseException] = []
    sentences = _sentences(texts, spec.lowercase, failure)
    try:
        first = next(sentences)
    except StopIteration:
        if failure:
            raise failure[0] from None
        raise CorpusError(f"empty corpus: {what} holds no non-blank text") from None

    def stream() -> Iterator[str]:
        yield first
        yield from sentences

    st = spec.special_tokens
    writer = io.BytesIO()
    spm.set_random_generator_seed(0)
    try:
        with open(os.devnull, "w") as devnull:  # SentencePiece logs every step to stderr otherwise
            spm.SentencePieceTrainer.train(
                sentence_iterator=stream(),
                model_writer=writer,
                logstream=devnull,
                model_type=spec.algorithm,
                vocab_size=spec.vocab_size,
                hard_vocab_limit=False,
                normalization_rule_name=spec.normalization,
                character_coverage=float(spec.character_coverage),
                byte_fallback=spec.byte_fallback,
                num_threads=1,
                input_sentence_size=0,
                shuffle_input_sentence=False,
                max_sentence_length=_SP_MAX_SENTENCE_BYTES,
                pad_id=0,
                unk_id=1,
                bos_id=2,
                eos_id=3,
                pad_piece=st["pad"],
                unk_piece=spec.unk_token,
                bos_piece=st["bos"],
                eos_piece=st["eos"],
                control_symbols=[st["boi"], st["eoi"], st["null"]],
            )
    except RuntimeError as e:
        if failure:  # the corpus iterator raised inside SentencePiece: surface the original error
            raise failure[0] from None
        m = re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", str(e))
        if m:
            raise SpecError(
                f"{spec.source or '<spec>'}: key 'vocab_size' {m.group(1)} is too small for this corpus: SentencePiece "
                f"needs at least {m.group(2)} (specials, every character kept and, with byte_fallback, 256 bytes)"
            ) from None
        raise TokenizerError(f"SentencePiece training on {what} failed: {e}") from e
    if failure:
        raise failure[0]
    return SentencePieceTokenizer(writer.getvalue(), {r: st[r] for r in SPECIAL_ROLES}, spec.lowercase)


def _sentences(texts: Iterable[str], lowercase: bool, failure: list[BaseException]) -> Iterator[str]:
    """Split texts into non-blank lines; an exception is recorded (SentencePiece would swallow it) and stops."""
    try:
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise CorpusError(f"corpus item {i} is {type(t).__name__}, expected str")
            for line in t.splitlines():
                line = line.strip()
                if line:
                    yield line.lower() if lowercase else line
    except Exception as e:
        failure.append(e)


def _describe(c: CorpusSpec) -> str:
    if c.kind == "text_file":
        return f"text file {c.path}"
    if c.kind == "datasets":
        return f"{c.format} column {c.column!r} of {[str(f) for f in c.data_files]}"
    return f"builtin {c.name!r} (task={c.task}, n={c.n}, seed={c.seed})"


def train_from_config(path: str | os.PathLike, log: Callable[[str], None] | None = None) -> SentencePieceTokenizer:
    """Read a spec, gather its corpus, train and save to the spec's `output`; returns the tokenizer.

    This is `unimodal tokenizer train --config PATH`.
    """
    spec = TokenizerSpec.from_yaml(path)
    tok = train_tokenizer(spec)
    assert spec.output is not None
    out = tok.save(spec.output)
    if log is not None:
        log(f"trained tokenizer {spec.name!r}: vocab_size {tok.vocab_size}, specials {tok.specials} -> {out}")
    return tok


__all__ = [
    "CorpusError",
    "CorpusSpec",
    "DEFAULT_SPECIALS",
    "HFTokenizer",
    "SPECIAL_ROLES",
    "SentencePieceTokenizer",
    "SpecError",
    "Tokenizer",
    "TokenizerError",
    "TokenizerSpec",
    "iter_corpus",
    "train_from_config",
    "train_tokenizer",
]
