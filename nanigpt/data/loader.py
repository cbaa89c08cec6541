"""Batches from a token shard: seeded random windows, in numpy and in Rust, identical.

Serves the project question "does Rust matter in the data pipeline?" (batch assembly is the step
that runs every training step) and feeds the trainer its (x, y) pairs.

Sampling, shared with `rust/src/loader.rs`:
- a splitmix64 generator (Steele, Lea & Flood 2014) seeded with `seed`, one draw per row;
- row start `s = draw % (N - seq_len)` for a shard of N tokens (modulo bias < N / 2**64, ignored);
- x = tokens[s : s + seq_len], y = tokens[s + 1 : s + seq_len + 1], labels = labels of y's tokens;
- eval window i of W = n * batch_size starts at `i * (N - seq_len - 1) // (W - 1)` (0 when W == 1):
  evenly spaced over the shard, independent of the seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nanigpt.data.shards import Shard, read_shard

MASK64 = (1 << 64) - 1


class SplitMix64:
    """splitmix64, as in Vigna's reference splitmix64.c; the Rust loader uses the same."""

    def __init__(self, seed: int) -> None:
        self.state = seed & MASK64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)


def eval_starts(num_tokens: int, seq_len: int, n_windows: int) -> np.ndarray:
    span = num_tokens - seq_len - 1
    if n_windows <= 1:
        return np.zeros(n_windows, dtype=np.int64)
    return np.array([i * span // (n_windows - 1) for i in range(n_windows)], dtype=np.int64)


class BatchLoader:
    """`next_batch() -> (x, y)` int64 tensors of shape (batch_size, seq_len); see module docstring."""

    def __init__(
        self,
        path_or_shard: str | Path | Shard,
        seq_len: int,
        batch_size: int,
        seed: int,
        impl: str = "python",
    ) -> None:
        if impl not in ("python", "rust"):
            raise ValueError(f"impl must be 'python' or 'rust', got {impl!r}")
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
        if not 0 <= seed < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        self.shard = (
            path_or_shard if isinstance(path_or_shard, Shard) else read_shard(path_or_shard)
        )
        self.seq_len, self.batch_size, self.seed, self.impl = seq_len, batch_size, seed, impl
        n = len(self.shard)
        if n < seq_len + 1:
            raise ValueError(
                f"token shard {self.shard.path} has {n} tokens; a window of seq_len={seq_len} "
                f"needs {seq_len + 1}"
            )
        self.num_tokens = n
        self._rng = SplitMix64(seed)
        self._rust = None
        if impl == "rust":
            import nanigpt_rs

            self._rust = nanigpt_rs.BatchLoader(str(self.shard.path), seq_len, batch_size, seed)
        self._offsets = np.arange(seq_len + 1, dtype=np.int64)

    # ---- numpy path ---------------------------------------------------------------------------
    def _gather(self, starts: np.ndarray, with_labels: bool):
        idx = starts[:, None] + self._offsets[None, :]
        window = self.shard.tokens[idx].astype(np.int64)
        x = torch.from_numpy(np.ascontiguousarray(window[:, :-1]))
        y = torch.from_numpy(np.ascontiguousarray(window[:, 1:]))
        if not with_labels:
            return x, y
        labels = torch.from_numpy(self.shard.labels[idx[:, 1:]].astype(np.int64))
        return x, y, labels

    def _empty(self, with_labels: bool):
        shape = (self.batch_size, self.seq_len)
        out = [torch.empty(shape, dtype=torch.int64) for _ in range(3 if with_labels else 2)]
        return out, [t.numpy() for t in out]

    # ---- public -------------------------------------------------------------------------------
    def _next(self, with_labels: bool):
        if self._rust is not None:
            tensors, arrays = self._empty(with_labels)
            self._rust.fill(*arrays)
            return tuple(tensors)
        span = self.num_tokens - self.seq_len
        starts = np.array([self._rng.next() % span for _ in range(self.batch_size)], dtype=np.int64)
        return self._gather(starts, with_labels)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._next(with_labels=False)

    def next_batch_with_labels(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, y, labels): labels[b, t] is the source_id of the document y[b, t] belongs to."""
        return self._next(with_labels=True)

    def eval_batches(self, n: int, with_labels: bool = False) -> list[tuple[torch.Tensor, ...]]:
        """n fixed batches of evenly spaced windows (deterministic, seed-independent)."""
        if self._rust is not None:
            batches = []
            for i in range(n):
                tensors, arrays = self._empty(with_labels)
                self._rust.fill_eval(i, n, *arrays)
                batches.append(tuple(tensors))
            return batches
        starts = eval_starts(self.num_tokens, self.seq_len, n * self.batch_size)
        return [
            self._gather(starts[i * self.batch_size : (i + 1) * self.batch_size], with_labels)
            for i in range(n)
        ]

    def __iter__(self):
        while True:
            yield self.next_batch()
