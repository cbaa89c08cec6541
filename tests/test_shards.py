"""Token shards round-trip; truncated, foreign and corrupt files fail loudly; the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanigpt.data.bpe import Tokenizer
from nanigpt.data.shards import HEADER_SIZE, ShardError, read_shard, write_shard
from nanigpt.data.tokenize import main as tokenize_main


@pytest.mark.parametrize(
    ("vocab_size", "token_dtype"), [(300, np.uint16), (65536, np.uint16), (70000, np.uint32)]
)
@pytest.mark.parametrize("labels_range", [(0, 3), (-5, 300), (0, 100000)])
def test_round_trip(tmp_path, vocab_size, token_dtype, labels_range):
    rng = np.random.default_rng(0)
    n = 1001  # odd: exercises the padding before the labels
    tokens = rng.integers(0, vocab_size, n)
    labels = rng.integers(*labels_range, n)
    path = tmp_path / "s.bin"
    write_shard(path, tokens, labels, byte_count=12345, vocab_size=vocab_size)
    shard = read_shard(path)
    assert shard.tokens.dtype == token_dtype
    np.testing.assert_array_equal(shard.tokens, tokens)
    np.testing.assert_array_equal(shard.labels, labels)
    assert shard.byte_count == 12345 and shard.vocab_size == vocab_size and len(shard) == n


def test_empty_shard(tmp_path):
    write_shard(tmp_path / "e.bin", [], [], byte_count=0, vocab_size=300)
    assert len(read_shard(tmp_path / "e.bin")) == 0


@pytest.fixture
def shard_path(tmp_path):
    path = tmp_path / "s.bin"
    write_shard(path, np.arange(100) % 300, np.zeros(100), byte_count=400, vocab_size=300)
    return path


def test_truncated(shard_path):
    data = shard_path.read_bytes()
    for cut in (10, HEADER_SIZE + 7, len(data) - 1):
        shard_path.write_bytes(data[:cut])
        with pytest.raises(ShardError, match="truncated") as e:
            read_shard(shard_path)
        assert str(shard_path) in str(e.value)


def test_trailing_bytes(shard_path):
    shard_path.write_bytes(shard_path.read_bytes() + b"\0")
    with pytest.raises(ShardError, match="trailing"):
        read_shard(shard_path)


def test_foreign_file(shard_path):
    shard_path.write_bytes(b"PAR1" + b"\0" * 200)
    with pytest.raises(ShardError, match="not a naniGPT token shard") as e:
        read_shard(shard_path)
    assert str(shard_path) in str(e.value)


def test_corrupt_ids_and_header(shard_path):
    data = bytearray(shard_path.read_bytes())
    data[HEADER_SIZE : HEADER_SIZE + 2] = (60000).to_bytes(2, "little")
    shard_path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="corrupt"):
        read_shard(shard_path)
    data[12:16] = (9).to_bytes(4, "little")
    shard_path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="dtype code"):
        read_shard(shard_path)


def test_missing_file(tmp_path):
    with pytest.raises(ShardError, match="no such file"):
        read_shard(tmp_path / "nope.bin")


def test_write_refuses_bad_ids(tmp_path):
    with pytest.raises(ValueError, match="token ids"):
        write_shard(tmp_path / "x.bin", [0, 300], [0, 0], byte_count=2, vocab_size=300)
    assert not list(tmp_path.iterdir())  # nothing half written


def make_parquet(path, n_docs=40, seed=0):
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "δέλτα", "北京", "🎉", "42", "it's", "x=1;"]
    texts = [" ".join(rng.choice(words, rng.integers(0, 30))) for _ in range(n_docs)]
    table = pa.table(
        {
            "text": texts,
            "source_id": pa.array(rng.integers(0, 3, n_docs), pa.int32()),
            "doc_id": pa.array(np.arange(n_docs), pa.int64()),
        }
    )
    pq.write_table(table, path)
    return texts, table.column("source_id").to_pylist()


def test_cli_end_to_end(tmp_path):
    texts, source_ids = make_parquet(tmp_path / "train.parquet")
    for impl in ("rust", "python"):
        tok_path = tmp_path / impl / "tokenizer.json"
        assert tokenize_main(["train", "--input", str(tmp_path / "train.parquet"), "--vocab-size",
                              "320", "--out", str(tok_path), "--impl", impl]) == 0  # fmt: skip
        assert tokenize_main(["encode", "--tokenizer", str(tok_path), "--input",
                              str(tmp_path / "train.parquet"), "--out", str(tmp_path / impl / "train.bin"),
                              "--impl", impl]) == 0  # fmt: skip
    assert json.loads((tmp_path / "rust/tokenizer.json").read_text()) == json.loads(
        (tmp_path / "python/tokenizer.json").read_text()
    )
    rust, python = (
        read_shard(tmp_path / "rust/train.bin"),
        read_shard(tmp_path / "python/train.bin"),
    )
    np.testing.assert_array_equal(rust.tokens, python.tokens)
    np.testing.assert_array_equal(rust.labels, python.labels)
    tok = Tokenizer.load(tmp_path / "rust/tokenizer.json")
    assert rust.byte_count == sum(len(t.encode()) for t in texts)
    expected = [i for t in texts for i in tok.encode_document(t)]
    np.testing.assert_array_equal(rust.tokens, expected)
    expected_labels = [
        s for t, s in zip(texts, source_ids, strict=True) for _ in tok.encode_document(t)
    ]
    np.testing.assert_array_equal(rust.labels, expected_labels)
    assert (rust.tokens == tok.eot_id).sum() == len(texts)


def test_cli_errors(tmp_path, caplog):
    make_parquet(tmp_path / "t.parquet")
    out = str(tmp_path / "tok.json")
    assert (
        tokenize_main(
            [
                "train",
                "--input",
                str(tmp_path / "missing.parquet"),
                "--vocab-size",
                "300",
                "--out",
                out,
            ]
        )
        == 2
    )
    assert "not found" in caplog.text
    (tmp_path / "bad.parquet").write_text("not parquet")
    assert (
        tokenize_main(
            ["train", "--input", str(tmp_path / "bad.parquet"), "--vocab-size", "300", "--out", out]
        )
        == 2
    )
    assert "cannot read" in caplog.text
    assert (
        tokenize_main(
            ["train", "--input", str(tmp_path / "t.parquet"), "--vocab-size", "100", "--out", out]
        )
        == 2
    )
    assert "--vocab-size" in caplog.text
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "nosrc.parquet")
    assert (
        tokenize_main(
            ["train", "--input", str(tmp_path / "t.parquet"), "--vocab-size", "300", "--out", out]
        )
        == 0
    )
    assert (
        tokenize_main(
            [
                "encode",
                "--tokenizer",
                out,
                "--input",
                str(tmp_path / "nosrc.parquet"),
                "--out",
                str(tmp_path / "x.bin"),
            ]
        )
        == 2
    )
    assert "source_id" in caplog.text
    assert (
        tokenize_main(
            [
                "encode",
                "--tokenizer",
                str(tmp_path / "t.parquet"),
                "--input",
                str(tmp_path / "t.parquet"),
                "--out",
                str(tmp_path / "x.bin"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "x.bin").exists()
