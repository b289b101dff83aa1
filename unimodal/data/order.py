"""Deterministic, resumable data order: shuffled indices for map-style data, a shuffle buffer for streams.

A training run must continue exactly where it stopped, mid-epoch included. Both orders here are a
pure function of (seed, epoch, position), so their state is a few integers:

- `ShuffledOrder(n, seed)` yields indices epoch after epoch, a fresh permutation per epoch from
  (seed, epoch); `state_dict()` holds (epoch, position).
- `ShuffleBuffer(source, buffer_size, seed)` shuffles a stream that cannot seek. Its state is
  (epoch, consumed); restoring replays the stream from the start of the epoch, re-running the same
  choices without handing out (or transforming/decoding) what was already consumed.

Both shard for data-parallel ranks (`rank`, `world_size`): each epoch the ranks see disjoint items
that together cover the data (shard sizes differ by at most one unless `drop_last`).
Permutations come from a counter-based hash (splitmix64), not from numpy's generators, so the same
state gives the same order on any machine and numpy version.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import numpy as np

T = TypeVar("T")
U = TypeVar("U")
_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64 of a Python int: a well-spread 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _mix_array(x: np.ndarray) -> np.ndarray:
    """splitmix64 over a uint64 array (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _epoch_key(seed: int, epoch: int) -> int:
    return _mix(_mix(seed & _MASK) ^ (epoch & _MASK))


def permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of range(n) for (seed, epoch): argsort of hashed positions (int64)."""
    keys = _mix_array(np.arange(n, dtype=np.uint64) + np.uint64(_epoch_key(seed, epoch)))
    return np.argsort(keys, kind="stable")


def _check_shard(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


def _check_state(owner: str, mine: dict[str, Any], state: dict[str, Any], keys: tuple[str, ...]) -> None:
    diff = {k: (state.get(k), mine[k]) for k in keys if state.get(k) != mine[k]}
    if diff:
        parts = ", ".join(f"{k}={a!r} (now {b!r})" for k, (a, b) in diff.items())
        raise ValueError(f"{owner} state was saved with {parts}; it cannot resume with different settings")


class ShuffledOrder:
    """Indices into n items, epoch after epoch: a new permutation per epoch from (seed, epoch).

    This rank gets `perm[rank::world_size]` (after dropping the last n % world_size items of the
    permutation if `drop_last`, so every rank has the same count). `shuffle=False` keeps 0..n-1.
    After `next()`, `epoch` is the epoch of the index just returned (use it to seed augmentation);
    `position` counts indices this rank has taken in that epoch. `epochs` stops after that many.
    """

    def __init__(
        self,
        n: int,
        seed: int = 0,
        *,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        epochs: int | None = None,
    ) -> None:
        _check_shard(rank, world_size)
        if n < world_size or (drop_last and n // world_size == 0):
            raise ValueError(f"{n} items cannot be sharded over world_size={world_size}")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size, self.drop_last, self.epochs = rank, world_size, drop_last, epochs
        self.epoch, self.position = 0, 0
        self._cache: tuple[int, np.ndarray] | None = None

    def indices(self, epoch: int) -> np.ndarray:
        """This rank's indices for `epoch`, in order."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        perm = permutation(self.n, self.seed, epoch) if self.shuffle else np.arange(self.n)
        if self.drop_last:
            perm = perm[: self.n - self.n % self.world_size]
        mine = perm[self.rank :: self.world_size]
        self._cache = (epoch, mine)
        return mine

    def __len__(self) -> int:
        """Indices per epoch for this rank."""
        if self.drop_last:
            return self.n // self.world_size
        return (self.n - self.rank + self.world_size - 1) // self.world_size

    def __iter__(self) -> ShuffledOrder:
        return self

    def __next__(self) -> int:
        if self.position >= len(self):
            if self.epochs is not None and self.epoch + 1 >= self.epochs:
                raise StopIteration
            self.epoch, self.position = self.epoch + 1, 0
        i = int(self.indices(self.epoch)[self.position])
        self.position += 1
        return i

    def state_dict(self) -> dict[str, Any]:
        """Where the order stands (JSON-serialisable); settings are kept to check a restore."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            **self._settings(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`; the next index is the one an uninterrupted run would give."""
        _check_state("ShuffledOrder", self._settings(), state, tuple(self._settings()))
        if not 0 <= state["position"] <= len(self):
            raise ValueError(f"ShuffledOrder position {state['position']} outside 0..{len(self)}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def _settings(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "rank": self.rank,
            "world_size": self.world_size,
            "drop_last": self.drop_last,
        }


class ShuffleBuffer(Generic[T, U]):
    """A seeded shuffle of a stream through a buffer of `buffer_size` items, resumable mid-epoch.

    `source` is re-iterable (a list, an HF dataset, `reader.records` ...) or a function returning a
    fresh iterator; it is read once per epoch. This rank keeps the items at stream positions
    `rank, rank + world_size, ...`. Items wait in the buffer raw; `transform(item, epoch)` (e.g.
    `DocumentReader.decode`) runs only on items handed out, and may return None to drop one (a
    skipped bad record). `state_dict()` = (epoch, consumed); after `load_state_dict()` the next
    iteration replays the epoch's choices, reading but not transforming the consumed items.
    `buffer_size=1` keeps stream order (a resumable plain pass).
    """

    def __init__(
        self,
        source: Iterable[T] | Callable[[], Iterable[T]],
        buffer_size: int,
        seed: int = 0,
        *,
        transform: Callable[[T, int], U | None] | None = None,
        rank: int = 0,
        world_size: int = 1,
        epochs: int | None = None,
    ) -> None:
        _check_shard(rank, world_size)
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        if not callable(source) and iter(source) is source:  # type: ignore[arg-type]
            raise TypeError(
                "ShuffleBuffer needs a re-iterable source (a list, a dataset, or a function returning a fresh "
                "iterator), not a one-shot iterator: each epoch and each restore reads the stream again"
            )
        self.source, self.buffer_size, self.seed = source, buffer_size, seed
        self.transform, self.rank, self.world_size, self.epochs = transform, rank, world_size, epochs
        self.epoch, self.consumed = 0, 0

    def _stream(self) -> Iterator[T]:
        it = self.source() if callable(self.source) and not hasattr(self.source, "__iter__") else self.source
        for pos, item in enumerate(it):  # type: ignore[arg-type]
            if pos % self.world_size == self.rank:
                yield item

    def _epoch_items(self, epoch: int) -> Iterator[T]:
        """The shuffled items of one epoch for this rank (raw, in emission order)."""
        key, buf = _epoch_key(self.seed, epoch), []
        k = 0
        for item in self._stream():
            if len(buf) < self.buffer_size:
                buf.append(item)
                continue
            j = _mix(key + k) % len(buf)
            out, buf[j] = buf[j], item
            k += 1
            yield out
        while buf:
            j = _mix(key + k) % len(buf)
            out, buf[j] = buf[j], buf[-1]
            buf.pop()
            k += 1
            yield out

    def __iter__(self) -> Iterator[U | T]:
        while self.epochs is None or self.epoch < self.epochs:
            start, emitted, yielded = self.consumed, 0, 0
            for k, item in enumerate(self._epoch_items(self.epoch)):
                emitted = k + 1
                if k < start:
                    continue  # replaying a restored epoch: already handed out before the save
                self.consumed = k + 1
                out = self.transform(item, self.epoch) if self.transform is not None else item
                if out is not None:
                    yielded += 1
                    yield out
            if emitted == 0:
                raise ValueError(f"ShuffleBuffer: the source has no items for rank {self.rank}/{self.world_size}")
            if start == 0 and yielded == 0:
                raise RuntimeError(f"ShuffleBuffer: every item of epoch {self.epoch} was dropped by the transform")
            self.epoch, self.consumed = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands (JSON-serialisable); settings are kept to check a restore."""
        return {"epoch": self.epoch, "consumed": self.consumed, **self._settings()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` at the next iteration (which replays the current epoch up to it)."""
        _check_state("ShuffleBuffer", self._settings(), state, tuple(self._settings()))
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])

    def _settings(self) -> dict[str, Any]:
        return {"seed": self.seed, "buffer_size": self.buffer_size, "rank": self.rank, "world_size": self.world_size}
