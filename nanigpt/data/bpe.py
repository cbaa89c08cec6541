"""Reference byte-level BPE: the readable oracle that the Rust tokenizer must match id for id.

Serves the project question "does Rust matter in the data pipeline?": this module is the Python
side of that comparison (and the ground truth for correctness). It is written to be read, not to be
fast: the trainer recounts every pair after each merge.

Vocabulary layout (docs/interfaces.md): ids 0..255 are the raw bytes, 256..V-2 the merges in rank
order (merge k creates id 256 + k), V-1 is `<|endoftext|>`.

Training (same rule as `rust/src/bpe.rs`):
1. Split every document into chunks with the GPT-2 regex; count identical chunks once with their
   frequency. Merges never cross a chunk boundary.
2. Repeat V-257 times: count adjacent pairs over all chunks (weighted by frequency), take the most
   frequent pair; **ties are broken by the smallest (left_id, right_id) pair**. Replace its
   occurrences in every chunk, left to right and non-overlapping ("aaa" with (a, a) -> [aa, a]).
   Stop early if no pair is left (a tiny corpus); the ids between the last merge and V-1 stay unused.

Encoding: within each chunk, repeatedly take the adjacent pair of lowest merge rank and replace all
its occurrences left to right. This equals replaying the merges in rank order, so it reproduces the
training segmentation exactly.

Text that is not valid Unicode (a lone surrogate in a Python str) is refused with a ValueError;
`<|endoftext|>` written inside a document is encoded as ordinary text, never as the special id.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nanigpt.io import read_json, write_json_atomic

log = logging.getLogger(__name__)

# GPT-2's pre-split pattern (openai/gpt-2, src/encoder.py).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"
TOKENIZER_FORMAT_VERSION = 1

Pair = tuple[int, int]


def utf8(text: str) -> bytes:
    """UTF-8 bytes of `text`; a lone surrogate gets a clear error instead of a codec traceback."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"text is not valid Unicode (lone surrogate {text[e.start : e.end]!r} at index "
            f"{e.start}); BPE works on UTF-8 bytes, clean the text first"
        ) from e


def split_chunks(text: str, pattern: str = GPT2_PATTERN) -> list[str]:
    """The pre-split: GPT-2 regex chunks, which concatenate back to `text`."""
    import regex  # imported here: the Rust path (and a machine without `regex`) never needs it

    return regex.findall(pattern, text)


def merge_pair(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every occurrence of `pair` in `ids` by `new_id`, left to right, non-overlapping."""
    out = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def count_chunks(texts: Iterable[str], pattern: str = GPT2_PATTERN) -> Counter[bytes]:
    """How often each distinct chunk (as UTF-8 bytes) occurs in the corpus."""
    counts: Counter[bytes] = Counter()
    for text in texts:
        utf8(text)  # refuse lone surrogates up front
        counts.update(chunk.encode("utf-8") for chunk in split_chunks(text, pattern))
    return counts


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    pattern: str = GPT2_PATTERN,
    log_every: int = 0,
) -> list[Pair]:
    """Learn `vocab_size - 257` merges (fewer if the corpus runs out of pairs)."""
    if vocab_size < 257:
        raise ValueError(f"vocab_size must be >= 257 (256 bytes + <|endoftext|>), got {vocab_size}")
    num_merges = vocab_size - 257
    chunk_counts = count_chunks(texts, pattern)
    words = [list(chunk) for chunk in chunk_counts]
    freqs = list(chunk_counts.values())
    merges: list[Pair] = []
    start = time.perf_counter()
    for rank in range(num_merges):
        pair_counts: Counter[Pair] = Counter()
        for word, freq in zip(words, freqs, strict=True):
            for pair in zip(word, word[1:], strict=False):
                pair_counts[pair] += freq
        if not pair_counts:
            log.warning(f"corpus ran out of pairs after {rank} merges (asked for {num_merges})")
            break
        # Most frequent pair; ties go to the smallest (left_id, right_id).
        best = min(pair_counts, key=lambda p: (-pair_counts[p], p))
        new_id = 256 + rank
        words = [merge_pair(word, best, new_id) if len(word) > 1 else word for word in words]
        merges.append(best)
        if log_every and (rank + 1) % log_every == 0:
            rate = (rank + 1) / (time.perf_counter() - start)
            log.info(f"merge {rank + 1}/{num_merges}: {rate:.1f} merges/s")
    return merges


def encode_chunk(chunk: bytes, ranks: dict[Pair, int]) -> list[int]:
    """Apply merges by rank inside one chunk: lowest-rank adjacent pair first, all occurrences."""
    ids = list(chunk)
    while len(ids) > 1:
        pairs = set(zip(ids, ids[1:], strict=False))
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        ids = merge_pair(ids, best, 256 + ranks[best])
    return ids


class TokenizerError(ValueError):
    """A tokenizer.json that is missing, malformed or inconsistent."""


@dataclass
class Tokenizer:
    """Merges plus the fixed layout; loads and saves `tokenizer.json` (docs/interfaces.md)."""

    merges: list[Pair]
    vocab_size: int
    pattern: str = GPT2_PATTERN

    def __post_init__(self) -> None:
        self.merges = [tuple(m) for m in self.merges]
        self.ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self.eot_id = self.vocab_size - 1
        self.token_bytes = [bytes([i]) for i in range(256)]
        for left, right in self.merges:
            self.token_bytes.append(self.token_bytes[left] + self.token_bytes[right])

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, pattern: str = GPT2_PATTERN, **kw):
        return cls(train_bpe(texts, vocab_size, pattern, **kw), vocab_size, pattern)

    # ---- encoding -------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no EOT appended)."""
        utf8(text)
        ids: list[int] = []
        for chunk in split_chunks(text, self.pattern):
            ids.extend(encode_chunk(chunk.encode("utf-8"), self.ranks))
        return ids

    def encode_document(self, text: str) -> list[int]:
        """Token ids of one document followed by `<|endoftext|>`, as the shards store them."""
        return [*self.encode(text), self.eot_id]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        parts = []
        for i in ids:
            if i == self.eot_id:
                parts.append(EOT.encode())
            elif 0 <= i < len(self.token_bytes):
                parts.append(self.token_bytes[i])
            else:
                raise ValueError(
                    f"token id {i} is not in this tokenizer (vocab_size {self.vocab_size})"
                )
        return b"".join(parts)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; a sequence cut inside a UTF-8 character decodes with U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def rust(self):
        """The same tokenizer as a `nanigpt_rs.Bpe` (the fast encoder)."""
        import nanigpt_rs

        return nanigpt_rs.Bpe(self.merges, self.vocab_size, self.pattern)

    # ---- tokenizer.json -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "version": TOKENIZER_FORMAT_VERSION,
            "pattern": self.pattern,
            "vocab_size": self.vocab_size,
            "merges": [list(m) for m in self.merges],
            "special_tokens": {EOT: self.eot_id},
        }

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, obj: dict, source: str = "tokenizer") -> Tokenizer:
        def bad(msg: str) -> TokenizerError:
            return TokenizerError(f"{source}: {msg}")

        if not isinstance(obj, dict):
            raise bad(f"expected a JSON object, got {type(obj).__name__}")
        for key in ("version", "pattern", "vocab_size", "merges"):
            if key not in obj:
                raise bad(f"missing key {key!r}")
        if obj["version"] != TOKENIZER_FORMAT_VERSION:
            raise bad(f"version {obj['version']!r}, expected {TOKENIZER_FORMAT_VERSION}")
        vocab_size = obj["vocab_size"]
        if not isinstance(vocab_size, int) or vocab_size < 257:
            raise bad(f"vocab_size must be an int >= 257, got {vocab_size!r}")
        merges = obj["merges"]
        if not isinstance(merges, list) or len(merges) > vocab_size - 257:
            raise bad(
                f"merges must be a list of at most vocab_size - 257 = {vocab_size - 257} pairs"
            )
        for rank, m in enumerate(merges):
            ok = isinstance(m, list) and len(m) == 2 and all(isinstance(i, int) for i in m)
            if not ok or not all(0 <= i < 256 + rank for i in m):
                raise bad(
                    f"merge {rank} is {m!r}: expected [left_id, right_id] with ids < {256 + rank}"
                )
        special = obj.get("special_tokens", {EOT: vocab_size - 1})
        if special != {EOT: vocab_size - 1}:
            raise bad(f"special_tokens must be {{{EOT!r}: {vocab_size - 1}}}, got {special!r}")
        try:
            import regex
        except ImportError:  # a machine with only the Rust encoder, which checks the pattern itself
            regex = None
        if regex is not None:
            try:
                regex.compile(obj["pattern"])
            except (regex.error, TypeError) as e:
                raise bad(f"pattern {obj['pattern']!r} does not compile: {e}") from e
        return cls([tuple(m) for m in merges], vocab_size, obj["pattern"])

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        return cls.from_dict(read_json(path, "tokenizer file"), source=f"tokenizer file {path}")
