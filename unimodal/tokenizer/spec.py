"""`TokenizerSpec` and `CorpusSpec`: how to train a tokenizer, read from YAML and validated.

Also the special-token roles every tokenizer must name (`SPECIAL_ROLES`) and their default strings.
Every invalid value raises a `SpecError` naming the file and the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SpecError

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

ALGORITHMS = ("bpe", "unigram", "word", "char")
NORMALIZATIONS = ("nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf", "identity")
CORPUS_KINDS = ("text_file", "datasets", "builtin")
CORPUS_FORMATS = ("json", "jsonl", "parquet", "csv", "text")

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
        where = _where(self.source)
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
                raise _unknown_role(where, role)
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
        where = _where(src)
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
                raise _unknown_role(where, role)
            _typed(where, f"special_tokens.{role}", s, str)
        unk = specials.pop("unk", DEFAULT_UNK)
        if "corpus" in kw:
            kw["corpus"] = _corpus_from_dict(kw["corpus"], where, base)
        output = kw.pop("output", None)
        out_path = base / (output if output is not None else kw["name"])
        return cls(**kw, special_tokens=specials, unk_token=unk, output=out_path, source=src)


def _where(source: Path | None) -> str:
    """How error messages name a spec: its file, else `<spec>`."""
    return str(source) if source else "<spec>"


def _unknown_role(where: str, role: Any) -> SpecError:
    return SpecError(f"{where}: unknown key 'special_tokens.{role}' (roles: {', '.join(SPECIAL_ROLES)}, unk)")


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
