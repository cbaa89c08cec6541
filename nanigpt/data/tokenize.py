"""Tokenizer CLI: train BPE on a parquet corpus, then encode splits into token shards.

Serves the graph's data stage (the tokenizers and token shards of `nanigpt.graph.paths`) and the project question
"does Rust matter in the data pipeline?" (`--impl rust`, the default, against `--impl python`).

    python -m nanigpt.data.tokenize train --input train.parquet --vocab-size V --out tokenizer.json
    python -m nanigpt.data.tokenize encode --tokenizer tokenizer.json --input split.parquet --out split.bin

`encode` appends `<|endoftext|>` after every document, labels every token (EOT included) with its
document's `source_id`, and records the UTF-8 byte count of the text (EOT excluded).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from nanigpt.data.bpe import GPT2_PATTERN, Tokenizer, TokenizerError, train_bpe, utf8
from nanigpt.data.shards import write_shard

log = logging.getLogger("nanigpt.data.tokenize")


class InputError(ValueError):
    """A bad argument or input file, reported without a traceback."""


def read_columns(path: str | Path, columns: list[str]) -> dict[str, list]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"input parquet not found: {path}")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a non-parquet file
        raise InputError(f"cannot read {path} as parquet: {e}") from e
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; it has {table.column_names}")
    out = {c: table.column(c).to_pylist() for c in columns}
    if any(t is None for t in out["text"]):
        raise InputError(f"{path}: column 'text' has null values")
    return out


def cmd_train(args: argparse.Namespace) -> None:
    if args.vocab_size < 257:
        raise InputError(
            f"--vocab-size must be >= 257 (256 bytes + <|endoftext|>), got {args.vocab_size}"
        )
    texts = read_columns(args.input, ["text"])["text"]
    n_bytes = sum(len(utf8(t)) for t in texts)
    log.info(
        f"training {args.impl} BPE, vocab {args.vocab_size}, on {len(texts)} docs ({n_bytes / 1e6:.2f} MB)"
    )
    start = time.perf_counter()
    if args.impl == "rust":
        import nanigpt_rs

        merges = [tuple(m) for m in nanigpt_rs.train_bpe(texts, args.vocab_size, GPT2_PATTERN)]
    else:
        merges = train_bpe(texts, args.vocab_size, GPT2_PATTERN, log_every=100)
    elapsed = time.perf_counter() - start
    if len(merges) < args.vocab_size - 257:
        log.warning(
            f"only {len(merges)} merges learned (corpus too small for vocab {args.vocab_size}); "
            f"ids {256 + len(merges)}..{args.vocab_size - 2} stay unused"
        )
    Tokenizer(merges, args.vocab_size, GPT2_PATTERN).save(args.out)
    log.info(
        f"{len(merges)} merges in {elapsed:.2f} s ({n_bytes / 1e6 / max(elapsed, 1e-9):.2f} MB/s) -> {args.out}"
    )


def cmd_encode(args: argparse.Namespace) -> None:
    try:
        tok = Tokenizer.load(args.tokenizer)
    except (FileNotFoundError, ValueError) as e:
        raise InputError(str(e)) from e
    cols = read_columns(args.input, ["text", "source_id"])
    texts, source_ids = cols["text"], cols["source_id"]
    n_bytes = sum(len(utf8(t)) for t in texts)
    start = time.perf_counter()
    if args.impl == "rust":
        flat, lengths = tok.rust().encode_documents(texts)
        tokens = np.frombuffer(flat, dtype="<u4")
        lengths = np.asarray(lengths, dtype=np.int64)
    else:
        docs = [tok.encode_document(t) for t in texts]
        lengths = np.array([len(d) for d in docs], dtype=np.int64)
        tokens = np.fromiter(
            (i for d in docs for i in d), dtype=np.uint32, count=int(lengths.sum())
        )
    elapsed = time.perf_counter() - start
    labels = np.repeat(np.asarray(source_ids, dtype=np.int64), lengths)
    write_shard(args.out, tokens, labels, byte_count=n_bytes, vocab_size=tok.vocab_size)
    log.info(
        f"encoded {len(texts)} docs, {n_bytes / 1e6:.2f} MB -> {len(tokens)} tokens "
        f"({n_bytes / max(len(tokens) - len(texts), 1):.2f} bytes/token) in {elapsed:.2f} s "
        f"({n_bytes / 1e6 / max(elapsed, 1e-9):.2f} MB/s, {args.impl}) -> {args.out}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.data.tokenize", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="learn BPE merges from a parquet's text column")
    train.add_argument("--input", required=True, help="parquet with a 'text' column")
    train.add_argument("--vocab-size", type=int, required=True)
    train.add_argument("--out", required=True, help="tokenizer.json to write")
    train.add_argument("--impl", choices=["rust", "python"], default="rust")
    train.set_defaults(func=cmd_train)
    enc = sub.add_parser("encode", help="encode a parquet split into a token shard")
    enc.add_argument("--tokenizer", required=True)
    enc.add_argument("--input", required=True, help="parquet with 'text' and 'source_id' columns")
    enc.add_argument("--out", required=True, help="shard .bin to write")
    enc.add_argument("--impl", choices=["rust", "python"], default="rust")
    enc.set_defaults(func=cmd_encode)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (InputError, TokenizerError) as e:
        log.error(f"{e}")
        return 2
    except ValueError as e:  # e.g. a lone surrogate in the text
        log.error(f"{args.input}: {e}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
