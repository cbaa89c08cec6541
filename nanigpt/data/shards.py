"""Token shards: the binary file between the tokenizer and the trainer.

Serves the project questions "are losses comparable across tokenizers?" (each shard records how many
UTF-8 bytes its tokens encode, so nats/token convert to bits/byte) and "which source does the model
learn?" (every token carries its document's `source_id`).

Layout (little-endian; `rust/src/shard.rs` reads the same):

| offset | size | field |
| --- | --- | --- |
| 0 | 8 | magic `b"NANITOK\\0"` |
| 8 | 4 | format version (u32) = 1 |
| 12 | 4 | token dtype code (u32): 2 = uint16 (vocab <= 65536), 3 = uint32 |
| 16 | 4 | label dtype code (u32): 1 = uint8, 4 = int16, 5 = int32 (smallest that fits) |
| 20 | 4 | vocab_size (u32) |
| 24 | 8 | token count N (u64) |
| 32 | 8 | byte_count (u64): UTF-8 text bytes the tokens encode, EOT excluded |
| 40 | 24 | reserved, zero |
| 64 | N * token size | tokens |
| 64 + round_up(N * token size, 8) | N * label size | one label per token |

The file size must equal the end of the labels exactly; anything else is a `ShardError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanigpt.io import atomic_path

MAGIC = b"NANITOK\0"
VERSION = 1
HEADER_SIZE = 64
_HEADER = struct.Struct("<8sIIIIQQ")  # 40 bytes, then 24 reserved
DTYPE_CODES = {
    1: np.dtype("<u1"),
    2: np.dtype("<u2"),
    3: np.dtype("<u4"),
    4: np.dtype("<i2"),
    5: np.dtype("<i4"),
}
CODE_OF = {dtype: code for code, dtype in DTYPE_CODES.items()}


class ShardError(ValueError):
    """A token shard that is truncated, foreign or corrupt; the message names the file."""


@dataclass
class Shard:
    path: Path
    tokens: np.ndarray  # memory-mapped, uint16 or uint32
    labels: np.ndarray  # memory-mapped, one source_id per token
    byte_count: int
    vocab_size: int

    def __len__(self) -> int:
        return len(self.tokens)


def token_dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


def label_dtype_for(labels: np.ndarray) -> np.dtype:
    if labels.size == 0 or (labels.min() >= 0 and labels.max() < 256):
        return np.dtype("<u1")
    if labels.min() >= -(2**15) and labels.max() < 2**15:
        return np.dtype("<i2")
    return np.dtype("<i4")


def _labels_offset(num_tokens: int, token_dtype: np.dtype) -> int:
    return HEADER_SIZE + -(-num_tokens * token_dtype.itemsize // 8) * 8


def write_shard(path: str | Path, tokens, labels, byte_count: int, vocab_size: int) -> None:
    """Write tokens and their labels atomically (temp file + rename)."""
    tokens = np.asarray(tokens)
    labels = np.asarray(labels)
    if tokens.ndim != 1 or labels.shape != tokens.shape:
        raise ValueError(
            f"tokens {tokens.shape} and labels {labels.shape} must be equal 1-D shapes"
        )
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(
            f"token ids must lie in [0, {vocab_size}), got [{tokens.min()}, {tokens.max()}]"
        )
    if not 0 <= byte_count < 2**64:
        raise ValueError(f"byte_count must be a non-negative u64, got {byte_count}")
    token_dtype = token_dtype_for(vocab_size)
    label_dtype = label_dtype_for(labels)
    header = _HEADER.pack(
        MAGIC,
        VERSION,
        CODE_OF[token_dtype],
        CODE_OF[label_dtype],
        vocab_size,
        len(tokens),
        byte_count,
    )
    pad = (
        _labels_offset(len(tokens), token_dtype) - HEADER_SIZE - tokens.size * token_dtype.itemsize
    )
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header.ljust(HEADER_SIZE, b"\0"))
        f.write(tokens.astype(token_dtype, copy=False).tobytes())
        f.write(b"\0" * pad)
        f.write(labels.astype(label_dtype, copy=False).tobytes())


def read_header(path: str | Path) -> dict:
    """Parse and check the header against the file size; raises ShardError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"token shard {path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(HEADER_SIZE)
    if len(head) < HEADER_SIZE:
        raise ShardError(
            f"token shard {path}: truncated ({size} bytes, header needs {HEADER_SIZE})"
        )
    magic, version, token_code, label_code, vocab_size, n, byte_count = _HEADER.unpack_from(head)
    if magic != MAGIC:
        raise ShardError(
            f"token shard {path}: not a naniGPT token shard (magic {magic!r}, expected {MAGIC!r})"
        )
    if version != VERSION:
        raise ShardError(
            f"token shard {path}: format version {version}, this reader knows {VERSION}"
        )
    if token_code not in (2, 3):
        raise ShardError(f"token shard {path}: bad token dtype code {token_code} (expected 2 or 3)")
    if label_code not in DTYPE_CODES:
        raise ShardError(f"token shard {path}: bad label dtype code {label_code}")
    token_dtype, label_dtype = DTYPE_CODES[token_code], DTYPE_CODES[label_code]
    if token_dtype != token_dtype_for(vocab_size):
        raise ShardError(
            f"token shard {path}: token dtype {token_dtype} does not match vocab_size {vocab_size}"
        )
    labels_offset = _labels_offset(n, token_dtype)
    expected = labels_offset + n * label_dtype.itemsize
    if size != expected:
        raise ShardError(
            f"token shard {path}: {size} bytes, but its header ({n} tokens) needs {expected}: "
            f"{'truncated' if size < expected else 'trailing bytes'}; rebuild it"
        )
    return {
        "token_dtype": token_dtype,
        "label_dtype": label_dtype,
        "vocab_size": vocab_size,
        "num_tokens": n,
        "byte_count": byte_count,
        "labels_offset": labels_offset,
    }


def read_shard(path: str | Path, check_ids: bool = True) -> Shard:
    """Memory-map a shard. `check_ids` scans the tokens once for ids >= vocab_size (corruption)."""
    path = Path(path)
    h = read_header(path)
    n = h["num_tokens"]
    if n == 0:
        tokens = np.zeros(0, h["token_dtype"])
        labels = np.zeros(0, h["label_dtype"])
    else:
        tokens = np.memmap(path, h["token_dtype"], "r", offset=HEADER_SIZE, shape=(n,))
        labels = np.memmap(path, h["label_dtype"], "r", offset=h["labels_offset"], shape=(n,))
    if check_ids and n and int(tokens.max()) >= h["vocab_size"]:
        raise ShardError(
            f"token shard {path}: token id {int(tokens.max())} >= vocab_size {h['vocab_size']} (corrupt)"
        )
    return Shard(path, tokens, labels, h["byte_count"], h["vocab_size"])
