"""Errors of tokenizers, their specs and their training corpora (all `ValueError`s)."""

from __future__ import annotations


class TokenizerError(ValueError):
    """A tokenizer is unusable (missing special token, unknown id, broken saved directory)."""


class SpecError(TokenizerError):
    """A tokenizer spec is invalid; the message names the file and the key."""


class CorpusError(TokenizerError):
    """A training corpus cannot be read (invalid UTF-8, empty, missing column, ...)."""
