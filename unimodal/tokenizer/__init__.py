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

Modules, one concept each (everything public is re-exported here): `errors`, `spec`
(`TokenizerSpec`, `CorpusSpec`, special roles), `corpus` (`iter_corpus`), `base` (`Tokenizer`),
`sentencepiece` and `hf` (the backends), `train` (`train_tokenizer`, `train_from_config`).
"""

from .base import META_FILE, Tokenizer
from .corpus import iter_corpus
from .errors import CorpusError, SpecError, TokenizerError
from .hf import HFTokenizer
from .sentencepiece import SentencePieceTokenizer
from .spec import (
    ALGORITHMS,
    CORPUS_FORMATS,
    CORPUS_KINDS,
    DEFAULT_SPECIALS,
    DEFAULT_UNK,
    NORMALIZATIONS,
    SPECIAL_ROLES,
    CorpusSpec,
    TokenizerSpec,
)
from .train import train_from_config, train_tokenizer

__all__ = [
    "ALGORITHMS",
    "CORPUS_FORMATS",
    "CORPUS_KINDS",
    "CorpusError",
    "CorpusSpec",
    "DEFAULT_SPECIALS",
    "DEFAULT_UNK",
    "HFTokenizer",
    "META_FILE",
    "NORMALIZATIONS",
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
