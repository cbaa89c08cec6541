"""Tokenizer, shard and loader speed: Python reference vs Rust vs the best libraries.

Serves the project question "does Rust matter in the data pipeline?" (issue 6). All numbers of one
call are measured in one process on one machine, so their ratios are comparable:
- BPE training MB/s: Python reference (on a small prefix: it recounts every pair per merge), Rust
  (same prefix and whole corpus), HF `tokenizers`' BpeTrainer (whole corpus), all at one vocab size;
- encoding MB/s, 1 thread and all threads: Rust, tiktoken loaded with our merges, HF `tokenizers`
  (its own merges at the same vocab), the Python reference (1 thread, prefix);
- loader batches/s and MB/s (int64 output bytes): Python (numpy) vs Rust;
- compression: UTF-8 bytes per token, ours vs HF at equal vocab size.

    python -m nanigpt.bench.tokenizer --input mix=data/synthetic/mix/train.parquet --vocab-size 2048 \
        --out results/rust/tokenizer.parquet

Writes the long table (one row per measurement) to the parquet and a JSON beside it with the ratios.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from nanigpt.data.bpe import EOT, GPT2_PATTERN, Tokenizer, train_bpe
from nanigpt.data.loader import BatchLoader
from nanigpt.data.shards import write_shard
from nanigpt.io import atomic_path, write_json_atomic
from nanigpt.measure.provenance import device_name

log = logging.getLogger("nanigpt.bench.tokenizer")


def best_time(fn, repeats: int) -> tuple[float, object]:
    """Smallest wall time of `repeats` calls (the least disturbed by other processes)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def prefix(texts: list[str], max_bytes: int) -> list[str]:
    out, total = [], 0
    for t in texts:
        if total >= max_bytes:
            break
        out.append(t)
        total += len(t.encode())
    return out


def mbytes(texts: list[str]) -> float:
    return sum(len(t.encode()) for t in texts) / 1e6


def hf_train(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer as HfTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HfTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def tiktoken_encoding(tok: Tokenizer):
    """Our merges as a tiktoken Encoding: rank = our id; a byte string made twice keeps its first id."""
    import tiktoken

    ranks: dict[bytes, int] = {}
    for i, b in enumerate(tok.token_bytes):
        ranks.setdefault(b, i)
    return tiktoken.Encoding(
        name="nanigpt",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={EOT: tok.eot_id},
    )


def bench_dataset(name: str, path: Path, args: argparse.Namespace) -> list[dict]:
    texts = pq.read_table(path, columns=["text"]).column("text").to_pylist()
    small = prefix(texts, int(args.python_mb * 1e6))
    mb, mb_small = mbytes(texts), mbytes(small)
    threads = os.cpu_count() or 1
    rows: list[dict] = []

    def row(measure, impl, n_threads, seconds, megabytes, **extra):
        rows.append(
            {
                "dataset": name,
                "measure": measure,
                "impl": impl,
                "threads": n_threads,
                "seconds": seconds,
                "megabytes": megabytes,
                "mb_per_s": megabytes / seconds,
                "vocab_size": args.vocab_size,
                **extra,
            }  # fmt: skip
        )
        log.info(
            f"{name} {measure} {impl} x{n_threads}: {megabytes / seconds:.3f} MB/s ({seconds:.3f} s)"
        )

    import nanigpt_rs

    V, R = args.vocab_size, args.repeats
    # ---- training ---------------------------------------------------------------------------
    t, py_merges = best_time(lambda: train_bpe(small, V), 1)
    row("train", "python", 1, t, mb_small)
    t, rs_small = best_time(lambda: nanigpt_rs.train_bpe(small, V), R)
    row("train", "rust", threads, t, mb_small, corpus="prefix")
    assert [tuple(m) for m in rs_small] == py_merges, "Rust and Python merges differ"
    t, rs_merges = best_time(lambda: nanigpt_rs.train_bpe(texts, V), R)
    row("train", "rust", threads, t, mb)
    t, _ = best_time(lambda: nanigpt_rs.train_bpe(texts, V, num_threads=1), R)
    row("train", "rust", 1, t, mb)
    t, hf = best_time(lambda: hf_train(texts, V), R)
    row("train", "hf_tokenizers", threads, t, mb)
    t, _ = best_time(lambda: hf_train(small, V), R)
    row("train", "hf_tokenizers", threads, t, mb_small, corpus="prefix")

    # ---- encoding ---------------------------------------------------------------------------
    tok = Tokenizer([tuple(m) for m in rs_merges], V)
    rust = tok.rust()
    t, ours = best_time(lambda: rust.encode_batch(texts, num_threads=1), R)
    row("encode", "rust", 1, t, mb)
    t, _ = best_time(lambda: rust.encode_batch(texts), R)
    row("encode", "rust", threads, t, mb)
    enc = tiktoken_encoding(tok)
    t, tk = best_time(lambda: [enc.encode_ordinary(x) for x in texts], R)
    agree = sum(a == b for a, b in zip(ours, tk, strict=True)) / len(texts)
    row("encode", "tiktoken", 1, t, mb, same_ids_frac=agree)
    t, _ = best_time(lambda: enc.encode_ordinary_batch(texts, num_threads=threads), R)
    row("encode", "tiktoken", threads, t, mb)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    t, _ = best_time(lambda: hf.encode_batch(texts, add_special_tokens=False), R)
    row("encode", "hf_tokenizers", 1, t, mb)
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    t, hf_out = best_time(lambda: hf.encode_batch(texts, add_special_tokens=False), R)
    row("encode", "hf_tokenizers", threads, t, mb)
    t, py_ids = best_time(lambda: [tok.encode(x) for x in small], 1)
    row("encode", "python", 1, t, mb_small)
    assert py_ids == ours[: len(small)], "Rust and Python ids differ"

    # ---- compression ------------------------------------------------------------------------
    n_ours = sum(len(x) for x in ours)
    n_hf = sum(len(e.ids) for e in hf_out)
    for impl, n in (("ours", n_ours), ("hf_tokenizers", n_hf)):
        rows.append({"dataset": name, "measure": "bytes_per_token", "impl": impl, "threads": 0,
                     "value": mb * 1e6 / n, "vocab_size": V})  # fmt: skip
        log.info(f"{name} bytes/token {impl}: {mb * 1e6 / n:.3f}")

    # ---- loader -----------------------------------------------------------------------------
    flat = np.fromiter((i for x in ours for i in (*x, tok.eot_id)), dtype=np.uint32)
    with tempfile.TemporaryDirectory() as tmp:
        shard_path = Path(tmp) / "bench.bin"
        write_shard(shard_path, flat, np.zeros(len(flat), np.int64), int(mb * 1e6), V)
        batch_bytes = args.batch_size * args.seq_len * 8 * 2 / 1e6  # x and y, int64
        for impl in ("python", "rust"):
            loader = BatchLoader(shard_path, args.seq_len, args.batch_size, seed=0, impl=impl)

            def run(loader=loader):
                for _ in range(args.loader_batches):
                    loader.next_batch()

            t, _ = best_time(run, R)
            row("loader", impl, 1, t, batch_bytes * args.loader_batches,
                batches_per_s=args.loader_batches / t)  # fmt: skip
    return rows


def ratios(df: pl.DataFrame) -> dict:
    def get(dataset, measure, impl, threads, corpus=None, col="mb_per_s"):
        sel = df.filter(
            (pl.col("dataset") == dataset)
            & (pl.col("measure") == measure)
            & (pl.col("impl") == impl)
            & (pl.col("threads") == threads)
        )
        sel = (
            sel.filter(pl.col("corpus") == corpus)
            if corpus
            else sel.filter(pl.col("corpus").is_null())
        )
        return float(sel[col][0])

    threads = os.cpu_count() or 1
    out = {}
    for d in df["dataset"].unique().to_list():
        out[d] = {
            "train_rust_over_python_same_prefix": get(d, "train", "rust", threads, "prefix")
            / get(d, "train", "python", 1),
            "train_rust_over_hf": get(d, "train", "rust", threads)
            / get(d, "train", "hf_tokenizers", threads),
            "encode_rust_over_tiktoken_1thread": get(d, "encode", "rust", 1)
            / get(d, "encode", "tiktoken", 1),
            "encode_rust_over_tiktoken_all_threads": get(d, "encode", "rust", threads)
            / get(d, "encode", "tiktoken", threads),
            "encode_rust_over_hf_1thread": get(d, "encode", "rust", 1)
            / get(d, "encode", "hf_tokenizers", 1),
            "encode_rust_over_python": get(d, "encode", "rust", 1) / get(d, "encode", "python", 1),
            "loader_rust_over_python": get(d, "loader", "rust", 1) / get(d, "loader", "python", 1),
            "bytes_per_token_ours_over_hf": get(d, "bytes_per_token", "ours", 0, col="value")
            / get(d, "bytes_per_token", "hf_tokenizers", 0, col="value"),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.bench.tokenizer", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--input", action="append", required=True, help="NAME=train.parquet (repeatable)"
    )
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--out", default="results/rust/tokenizer.parquet")
    parser.add_argument(
        "--python-mb", type=float, default=0.2, help="prefix size for the Python reference"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--loader-batches", type=int, default=200)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    rows = []
    for spec in args.input:
        name, sep, path = spec.partition("=")
        if not sep or not Path(path).is_file():
            parser.error(f"--input must be NAME=existing.parquet, got {spec!r}")
        rows.extend(bench_dataset(name, Path(path), args))
    df = pl.DataFrame(rows, infer_schema_length=None)
    if "corpus" not in df.columns:
        df = df.with_columns(pl.lit(None, pl.Utf8).alias("corpus"))
    with atomic_path(args.out) as tmp:
        df.write_parquet(tmp)
    summary = {
        "ratios": ratios(df),
        "device": device_name("cpu"),
        "cpu_count": os.cpu_count(),
        "rows": df.to_dicts(),
    }
    write_json_atomic(Path(args.out).with_suffix(".json"), summary)
    for d, r in summary["ratios"].items():
        for k, v in r.items():
            log.info(f"{d} {k}: {v:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
