"""Built-in `digits`: scikit-learn's bundled handwritten digits (real data, no download).

1797 greyscale images of 8x8 pixels with 17 grey levels (0..16), from 43 writers (UCI ML
hand-written digits). Each becomes `Document([Text("a handwritten seven"), Image(8x8 uint8)],
label=7)`. The split is fixed: a permutation with seed 0, the first 360 images (20%) are `test`,
the rest `train`, so every user and every run sees the same held-out set.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np

from ..documents import Document, Image, Text

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEST_SIZE = 360
SPLIT_SEED = 0


@cache
def _arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)  # 17 grey levels 0, 16, ..., 255
    return images, d.target.astype(np.int64)


def split_indices(split: str) -> np.ndarray:
    """Indices of the fixed `train` or `test` split into the 1797 images."""
    if split not in ("train", "test"):
        raise ValueError(f"digits split must be 'train' or 'test', got {split!r}")
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(_arrays()[1]))
    return np.sort(perm[:TEST_SIZE] if split == "test" else perm[TEST_SIZE:])


def caption(label: int) -> str:
    return f"a handwritten {WORDS[label]}"


class DigitsDataset(Sequence):
    """The fixed split as a sequence of Documents; `n` truncates (None: all)."""

    def __init__(self, split: str = "train", n: int | None = None) -> None:
        self.split = split
        self.indices = split_indices(split)
        if n is not None:
            self.indices = self.indices[:n]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Document:
        if not -len(self) <= i < len(self):
            raise IndexError(f"digits[{i}] out of range for {len(self)} documents")
        images, targets = _arrays()
        j = int(self.indices[i])
        label = int(targets[j])
        meta = {"dataset": "digits", "split": self.split, "index": j, "digit": label}
        return Document([Text(caption(label)), Image(images[j])], label=label, meta=meta)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All images (n, 8, 8) uint8 and labels (n,) of this split, for classifiers and metrics."""
        images, targets = _arrays()
        return images[self.indices], targets[self.indices]
