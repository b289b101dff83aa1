"""Data: built-in datasets, documents from files through HF `datasets`, collation into batches."""

from __future__ import annotations

from collections.abc import Sequence

from ..documents import Document

BUILTINS = ("shapes", "digits")


def load_builtin(
    name: str, split: str = "train", task: str | None = None, seed: int = 0, n: int | None = None, **options
) -> Sequence[Document]:
    """A built-in dataset as a sequence of Documents, generated or shipped, never downloaded.

    `shapes`: procedural coloured shapes (tasks `scenes` (default), `t2i`, `caption`, `story`,
    `video`); `n` documents per split (default 10000), deterministic in (seed, split, index).
    `digits`: scikit-learn's real 8x8 handwritten digits with a fixed train/test split; `n`
    truncates.
    """
    if name == "shapes":
        from .shapes import ShapesDataset

        return ShapesDataset(task=task or "scenes", split=split, seed=seed, n=10000 if n is None else n, **options)
    if name == "digits":
        from .digits import DigitsDataset

        _check_digits(task, options)
        return DigitsDataset(split=split, n=n)
    raise KeyError(f"unknown built-in dataset {name!r}; built-ins are {BUILTINS}")


def check_builtin(name: str, split: str = "train", task: str | None = None, **options) -> None:
    """Raise the error `load_builtin` would for these arguments, without making or loading data,
    so a config is refused on load rather than when training starts."""
    if name == "shapes":
        from .shapes import ShapesDataset

        ShapesDataset(task=task or "scenes", split=split, n=0, **options)  # its constructor checks, generates nothing
    elif name == "digits":
        _check_digits(task, options)
    else:
        raise KeyError(f"unknown built-in dataset {name!r}; built-ins are {BUILTINS}")


def _check_digits(task: str | None, options: dict) -> None:
    if task not in (None, "t2i"):
        raise ValueError(f"digits has one task, 't2i' (text then image), got {task!r}")
    if options:
        raise TypeError(f"digits takes no options, got {sorted(options)}")


__all__ = ["BUILTINS", "check_builtin", "load_builtin"]
