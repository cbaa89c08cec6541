"""The loader: Python (numpy) and Rust give identical, deterministic batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nanigpt.data.loader import BatchLoader, SplitMix64, eval_starts
from nanigpt.data.shards import read_shard, write_shard


@pytest.fixture(params=[300, 70000], ids=["uint16", "uint32"])
def shard_path(tmp_path, request):
    vocab_size = request.param
    rng = np.random.default_rng(1)
    n = 5000
    path = tmp_path / "s.bin"
    labels = np.repeat(np.arange(50) % 4, n // 50)
    write_shard(
        path, rng.integers(0, vocab_size, n), labels, byte_count=n * 3, vocab_size=vocab_size
    )
    return path


def test_splitmix64_reference_values():
    rng = SplitMix64(0)
    assert [rng.next(), rng.next()] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]


def test_python_equals_rust(shard_path):
    py = BatchLoader(shard_path, seq_len=32, batch_size=4, seed=7, impl="python")
    rs = BatchLoader(shard_path, seq_len=32, batch_size=4, seed=7, impl="rust")
    tokens = read_shard(shard_path).tokens
    for _ in range(20):
        x, y = py.next_batch()
        xr, yr = rs.next_batch()
        assert x.dtype == torch.int64 and x.shape == (4, 32)
        assert torch.equal(x, xr) and torch.equal(y, yr)
        assert torch.equal(x[:, 1:], y[:, :-1])
    for a, b in zip(py.next_batch_with_labels(), rs.next_batch_with_labels(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(
        py.eval_batches(3, with_labels=True), rs.eval_batches(3, with_labels=True), strict=True
    ):
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    # a window really is a slice of the shard
    x, y = BatchLoader(shard_path, 32, 1, seed=3).next_batch()
    start = SplitMix64(3).next() % (len(tokens) - 32)
    assert x[0].tolist() == tokens[start : start + 32].tolist()


def test_labels_follow_targets(shard_path):
    shard = read_shard(shard_path)
    x, y, labels = BatchLoader(shard, 16, 2, seed=1).next_batch_with_labels()
    start = SplitMix64(1).next() % (len(shard) - 16)
    assert labels[0].tolist() == shard.labels[start + 1 : start + 17].tolist()


def test_determinism_and_seeds(shard_path):
    def first(seed, impl):
        return BatchLoader(shard_path, 8, 2, seed=seed, impl=impl).next_batch()[0]

    assert torch.equal(first(5, "python"), first(5, "python"))
    assert not torch.equal(first(5, "rust"), first(6, "rust"))
    ev = [BatchLoader(shard_path, 8, 2, seed=s).eval_batches(2)[1][0] for s in (1, 2)]
    assert torch.equal(*ev)


def test_eval_windows_cover_the_shard():
    starts = eval_starts(1000, 10, 5)
    assert starts.tolist() == [0, 247, 494, 741, 989]


def test_bad_arguments(shard_path, tmp_path):
    with pytest.raises(ValueError, match="needs"):
        BatchLoader(shard_path, seq_len=10**6, batch_size=1, seed=0)
    with pytest.raises(ValueError, match="impl"):
        BatchLoader(shard_path, 8, 1, seed=0, impl="c")
    (tmp_path / "junk.bin").write_bytes(b"junk" * 100)
    with pytest.raises(ValueError, match="not a naniGPT token shard"):
        BatchLoader(tmp_path / "junk.bin", 8, 1, seed=0)
