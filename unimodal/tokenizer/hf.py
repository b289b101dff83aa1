"""The HF `tokenizers` backend of `Tokenizer` (`tokenizer.json`), so users can bring a fast tokenizer."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .base import Tokenizer, _outside_vocabulary, _require_file
from .errors import TokenizerError


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

        _require_file(path)
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
            raise _outside_vocabulary(i, self.vocab_size)
        return t

    def _write(self, path: Path) -> None:
        self._tok.save(str(path))
