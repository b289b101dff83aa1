"""Training SentencePiece tokenizers from a `TokenizerSpec` (`unimodal tokenizer train --config PATH`)."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Iterable, Iterator

from .corpus import describe_corpus, iter_corpus
from .errors import CorpusError, SpecError, TokenizerError
from .sentencepiece import SentencePieceTokenizer
from .spec import SPECIAL_ROLES, TokenizerSpec, _where

_SP_MAX_SENTENCE_BYTES = 1 << 16  # SentencePiece silently drops longer sentences (default 4192 bytes)


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
            raise SpecError(f"{_where(spec.source)}: no 'corpus' given and no texts passed to train_tokenizer")
        texts = iter_corpus(spec.corpus)
        what = describe_corpus(spec.corpus)
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
                f"{_where(spec.source)}: key 'vocab_size' {m.group(1)} is too small for this corpus: SentencePiece "
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
