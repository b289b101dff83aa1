"""The SentencePiece backend of `Tokenizer` (`tokenizer.model`, what `train_tokenizer` produces)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .base import Tokenizer, _outside_vocabulary, _require_file
from .errors import TokenizerError


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
        _require_file(path)
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
            raise _outside_vocabulary(i, self.vocab_size)
        return self._sp.id_to_piece(i)

    def _write(self, path: Path) -> None:
        path.write_bytes(self._proto)
