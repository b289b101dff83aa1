"""Bad input: a named error for one broken record, and the policy that raises or skips it.

Every broken record is reported as a `BadRecord` naming the dataset, the record index, the field
and the reason, so a user can find it in their files. `RecordPolicy` decides what happens:
`"raise"` stops with that message; `"skip"` drops the record, logs the first one of each reason
and counts them all by reason, so nothing bad reaches a batch silently and the run can report
what it dropped (`counts`, `summary()`).

Reasons are short stable strings (the constants below) so counts group; specifics (a path, a
shape, the decoder's message) go in `detail`.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

log = logging.getLogger("unimodal.data")

UNREADABLE_IMAGE = "unreadable image"
MISSING_FILE = "missing file"
WRONG_SIZE = "wrong size"
BAD_ARRAY = "bad array"
EMPTY_TEXT = "empty text"
INVALID_UTF8 = "invalid UTF-8"
NON_FINITE = "NaN or inf in array"
MISSING_FIELD = "missing field"
WRONG_TYPE = "wrong type"
LENGTH_MISMATCH = "lists differ in length"
BAD_SLOT = "bad interleaved slot"
EMPTY_DOCUMENT = "empty document"
TOO_FEW_FRAMES = "too few frames"
TEXT_TOO_LONG = "text longer than the context"
DOC_TOO_LONG = "document longer than the context"

POLICIES = ("raise", "skip")


class BadValue(ValueError):
    """A value that cannot be used, with a stable `reason` and a `detail`; the loader that knows
    the dataset, record and field turns it into a `BadRecord`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason} ({detail})" if detail else reason)


class BadRecord(Exception):
    """One broken record: which dataset, which record, which field, and why."""

    def __init__(self, dataset: str, index: int | None, field: str, reason: str, detail: str = "") -> None:
        self.dataset = dataset
        self.index = index
        self.field = field
        self.reason = reason
        self.detail = detail
        where = f"record {index}" if index is not None else "record ?"
        why = f"{reason} ({detail})" if detail else reason
        super().__init__(f"bad record in dataset {dataset!r}, {where}, field {field!r}: {why}")

    @classmethod
    def from_value(cls, dataset: str, index: int | None, field: str, err: BadValue) -> BadRecord:
        """Attach the dataset, record index and field to a `BadValue`."""
        return cls(dataset, index, field, err.reason, err.detail)

    @classmethod
    def from_meta(
        cls, meta: dict[str, Any], field: str, reason: str, detail: str = "", dataset: str = "data"
    ) -> BadRecord:
        """A BadRecord for a loaded Document, from its `meta` ({"dataset", "index"}); `dataset` is
        the fallback name for documents built in memory."""
        return cls(str(meta.get("dataset", dataset)), meta.get("index"), field, reason, detail)


def check_text_length(
    n_tokens: int, context: int, meta: dict[str, Any], field: str = "text", dataset: str = "data"
) -> None:
    """Raise a `BadRecord` (reason `TEXT_TOO_LONG`) if `n_tokens` do not fit in `context`."""
    if n_tokens > context:
        raise BadRecord.from_meta(meta, field, TEXT_TOO_LONG, f"{n_tokens} tokens > {context}", dataset)


class RecordPolicy:
    """`on_bad_record`: `"raise"` re-raises each `BadRecord`; `"skip"` drops and counts it by reason.

    The first record skipped for each reason is logged (warning) with its full message; later ones
    are counted only. `counts` and `summary()` report what was dropped; `state_dict()` lets the
    counts survive a resumed run.
    """

    def __init__(self, on_bad_record: str = "raise", max_examples: int = 5) -> None:
        if on_bad_record not in POLICIES:
            raise ValueError(f"on_bad_record must be one of {POLICIES}, got {on_bad_record!r}")
        self.mode = on_bad_record
        self.max_examples = max_examples
        self._counts: Counter[str] = Counter()
        self.examples: list[str] = []

    def handle(self, err: BadRecord) -> None:
        """Raise `err` (policy "raise") or record it as skipped (policy "skip")."""
        if self.mode == "raise":
            raise err
        if self._counts[err.reason] == 0:
            log.warning("skipping %s (further records skipped for this reason are counted)", err)
        self._counts[err.reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(str(err))

    @property
    def counts(self) -> dict[str, int]:
        """Skipped records by reason."""
        return dict(self._counts)

    @property
    def total(self) -> int:
        """Skipped records in all."""
        return sum(self._counts.values())

    def summary(self) -> str:
        """One line, e.g. "skipped 3 bad records: 2 unreadable image, 1 empty text"."""
        if not self._counts:
            return "skipped 0 bad records"
        parts = ", ".join(f"{n} {r}" for r, n in self._counts.most_common())
        return f"skipped {self.total} bad record{'s' if self.total != 1 else ''}: {parts}"

    def report(self) -> dict[str, Any]:
        """`{"skipped": total, "by_reason": counts, "examples": first messages}`."""
        return {"skipped": self.total, "by_reason": self.counts, "examples": list(self.examples)}

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "counts": self.counts, "examples": list(self.examples)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._counts = Counter(state.get("counts", {}))
        self.examples = list(state.get("examples", []))

    def __repr__(self) -> str:
        return f"RecordPolicy({self.mode!r}, {self.summary()})"
