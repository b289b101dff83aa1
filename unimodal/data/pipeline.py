"""From a data config to a resumable stream of batches.

    data:
      builtin: shapes          # or digits; or `source:` for your own files (a DataSource dict)
      task: scenes
      batch_size: 32
      collate: {image_first_rate: 0.5, prompt_dropout: 0.1, buckets: [256, 512]}

`build_documents` gives the documents (a built-in sequence, or a `DocumentReader` over local files);
`BatchStream` shuffles them deterministically, collates, and yields `Batch`es forever. Its state
is a few integers (order position, batches served), so a run resumes mid-epoch exactly; the
collator's random choices are seeded by (seed, rank, batch number), not by a stateful generator.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..configtools import build
from ..documents import Document
from ..layout import Batch
from . import check_builtin, load_builtin
from .collate import CollateConfig, Collator
from .formats import DataSource, DocumentReader, load_documents
from .order import ShuffleBuffer, ShuffledOrder


@dataclass
class DataConfig:
    """Where documents come from and how they are batched; validated on construction."""

    builtin: str | None = None
    task: str | None = None
    n: int | None = None
    split: str = "train"
    options: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] | None = None
    batch_size: int = 32
    seed: int = 0
    shuffle_buffer: int = 1000
    collate: dict[str, Any] = field(default_factory=dict)
    prefetch: int = 0  # batches built ahead in a thread; 0: on the main thread (faster on CPU and GPU)

    def __post_init__(self) -> None:
        if (self.builtin is None) == (self.source is None):
            raise ValueError("data: give exactly one of `builtin` (shapes, digits) or `source` (your files)")
        if self.builtin is not None:
            try:
                check_builtin(self.builtin, split=self.split, task=self.task, **self.options)
            except (KeyError, TypeError, ValueError) as e:
                msg = e.args[0] if e.args else e
                raise ValueError(f"data (builtin {self.builtin!r}, task, split or options): {msg}") from None
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if self.shuffle_buffer < 1:
            raise ValueError(f"data.shuffle_buffer must be >= 1, got {self.shuffle_buffer}")
        if isinstance(self.prefetch, bool) or not isinstance(self.prefetch, int) or self.prefetch < 0:
            raise ValueError(f"data.prefetch must be an integer >= 0, got {self.prefetch!r}")
        self.collate_config()  # validates the collate keys now, not at the first batch

    def collate_config(self) -> CollateConfig:
        return build(CollateConfig, self.collate, "data.collate")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataConfig:
        return build(cls, d, "data")


def build_documents(cfg: DataConfig) -> Sequence[Document] | DocumentReader:
    """The configured documents: a built-in dataset or a reader over local files."""
    if cfg.builtin is not None:
        return load_builtin(cfg.builtin, split=cfg.split, task=cfg.task, seed=cfg.seed, n=cfg.n, **cfg.options)
    if cfg.source.get("format") == "latents":  # cached autoencoder latents (`unimodal latents encode`)
        from .latents import load_latents

        return load_latents(cfg.source)
    return load_documents(DataSource.from_dict(cfg.source))


class BatchStream:
    """Shuffled, collated batches forever (epoch after epoch), resumable with `state_dict`.

    Map-style documents (a built-in sequence, a non-streaming reader) go through `ShuffledOrder`;
    a streaming reader through a seeded `ShuffleBuffer`. All ranks walk the same global order; each
    global batch is `batch_size * world_size` consecutive documents and rank r takes the r-th slice.
    Every document's random choices (collation, diffusion time and noise) are seeded by (seed,
    batch number, its index in the global batch), so N ranks see exactly the batches one process
    with the global batch would, split in N.
    """

    def __init__(
        self,
        docs: Sequence[Document] | DocumentReader,
        collator: Collator,
        batch_size: int,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.docs, self.collator, self.batch_size, self.seed = docs, collator, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches = 0
        if isinstance(docs, DocumentReader) and docs.source.streaming:
            self.order = ShuffleBuffer(docs.records, shuffle_buffer, seed, transform=docs.decode)
        else:
            self.order = ShuffledOrder(len(docs), seed)
        self._slots: Iterator[int | Document | None] | None = None

    def _load(self, item: int | Document) -> Document | None:
        if not isinstance(item, (int, np.integer)):
            return item
        if isinstance(self.docs, DocumentReader):  # None: a bad record, skipped and counted by the reader
            return self.docs.get(int(item), self.order.epoch)
        return self.docs[int(item)]

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self._slots is None:  # the global order: indices (map-style) or decoded documents (a stream)
            self._slots = iter(self.order)
        slots = [next(self._slots) for _ in range(self.batch_size * self.world_size)]
        first = self.rank * self.batch_size
        docs, keys = [], []
        for i, item in enumerate(slots[first : first + self.batch_size]):
            doc = self._load(item)
            if doc is not None:
                docs.append(doc)
                keys.append(int(np.random.SeedSequence([self.seed, self.batches, first + i]).generate_state(1)[0]))
        self.batches += 1
        return self.collator(docs, [np.random.default_rng(k) for k in keys], keys)

    def policies(self) -> dict[str, Any]:
        """The bad-record policies that count skips: the collator's, and the reader's for files."""
        out = {"collate": self.collator.policy}
        if isinstance(self.docs, DocumentReader):
            out["reader"] = self.docs.policy
        return out

    def skipped(self) -> dict[str, Any]:
        """What was skipped so far, by stage ({stage: RecordPolicy.report()})."""
        return {k: p.report() for k, p in self.policies().items()}

    def state_dict(self) -> dict[str, Any]:
        """Order position, batches served and skip counts: what exact resumption needs."""
        return {
            "order": self.order.state_dict(),
            "batches": self.batches,
            "policies": {k: p.state_dict() for k, p in self.policies().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state["order"])
        self.batches = int(state["batches"])
        for k, p in self.policies().items():
            if k in state.get("policies", {}):
                p.load_state_dict(state["policies"][k])
        self._slots = None


def batch_stream(cfg: DataConfig | dict[str, Any], tokenizer, model_cfg, rank: int = 0, world_size: int = 1):
    """The `BatchStream` a data config describes, for a tokenizer and a model config."""
    cfg = cfg if isinstance(cfg, DataConfig) else DataConfig.from_dict(cfg)
    name = cfg.builtin or (cfg.source or {}).get("name", "data")
    collator = Collator(tokenizer, model_cfg, cfg.collate_config(), name=name)
    return BatchStream(build_documents(cfg), collator, cfg.batch_size, cfg.seed, cfg.shuffle_buffer, rank, world_size)
