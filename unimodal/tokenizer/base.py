"""The `Tokenizer` interface: text <-> ids with named special tokens, saved and loaded with its backend.

A `Tokenizer` turns text into ids and back and knows the ids of the special tokens the layout
needs (`pad bos eos boi eoi null`). Those ids are always looked up in the tokenizer itself by the
special strings, never taken from constants, so any tokenizer (ours or one a user brings) works.
Backends: `sentencepiece.SentencePieceTokenizer` and `hf.HFTokenizer`.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import TokenizerError
from .spec import DEFAULT_SPECIALS, SPECIAL_ROLES

META_FILE = "unimodal_tokenizer.json"


def _backends() -> dict[str, type[Tokenizer]]:
    """Backend name (as saved in `META_FILE`) -> class; imported here, as the backends import this module."""
    from .hf import HFTokenizer
    from .sentencepiece import SentencePieceTokenizer

    return {"sentencepiece": SentencePieceTokenizer, "hf": HFTokenizer}


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")


def _outside_vocabulary(i: int, size: int) -> TokenizerError:
    return TokenizerError(f"id {i} is outside the vocabulary (size {size})")


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
                raise _outside_vocabulary(i, n)
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
        backends = _backends()
        cls = backends.get(backend)
        if cls is None:
            raise TokenizerError(f"{meta_path}: unknown backend {backend!r} (known: {', '.join(backends)})")
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
        from .hf import HFTokenizer
        from .sentencepiece import SentencePieceTokenizer

        p = Path(path)
        _require_file(p)
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
