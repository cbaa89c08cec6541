"""Synthetic text whose optimal loss is known exactly: a mixture of sparse Markov sources.

Serves core questions 3 and 5 (when do MoEs win; how does data structure interact with
architecture) through the design principle "synthetic first": every loss a model reaches on this
data has an exact floor, and every document carries the id of the source that wrote it, so expert
routing can later be scored against the truth.

The generative model
--------------------
K sources share one alphabet of A "words" (distinct short lowercase strings). A symbol renders as
its word followed by one space, so the text is uniquely decodable and byte-level BPE has word
structure to find. Source k is a Markov chain of order `order` over the alphabet; its states are the
last `order` symbols, S = A**order of them. From each state the next symbol is drawn as

    P_k(s | x) = (1 - eps) * q_k(s | x) + eps / A

where q_k is sparse (`branching` successors per state) and eps = `uniform_mix`. The uniform part
makes every k-symbol string reachable from every state in exactly `order` and in `order + 1`
steps, so the chain is irreducible and aperiodic and its stationary distribution pi_k is unique.

Heavy tails (the `zipf_exponent` knob, a): each source ranks the alphabet by a private random
permutation and gives the word of rank r the weight (r + 1)**-a; each state's successors are drawn
without replacement in proportion to those weights (exponential race), and the successor of rank r
within state x gets q proportional to (r + 1)**-a_x, with a_x drawn uniformly in [a/2, 3a/2] per
state so that contexts differ in how much they decide. With a = 0 everything is uniform; larger a
makes both word frequencies and transitions heavy-tailed, so rarely visited states keep giving a
bigger model something to learn (smooth loss-vs-size curves instead of a cliff).

A document picks its source from the mixture weights, its length L uniformly in `doc_symbols`,
its first `order` symbols from pi_k (so every position is stationary), then runs the chain.

The floor
---------
Per source: the entropy rate H_k = -sum_x pi_k(x) sum_s P_k(s|x) ln P_k(s|x) in nats/symbol, and
in bits/byte H_k / (ln 2 * b_k) with b_k the expected bytes per symbol under pi_k.
For the mixture: the loss of the Bayes-optimal predictor on the validation split, computed exactly
by running the true model. The predictor keeps a posterior over sources and updates it symbol by
symbol; the sum of its per-symbol losses telescopes to -ln sum_k w_k p_k(doc), which is what
`document_log_likelihoods` evaluates (the test checks the step-by-step version gives the same
number). The first `order` symbols of a document are charged under the mixture of the pi_k (the
document-start cost, reported on its own too). `floor_bits_per_byte` = that total / (ln 2 * utf-8
bytes of the val text). It leaves out the cost of the document lengths (where EOT falls);
`floor_incl_doc_length_bits_per_byte` adds ln(number of possible lengths) per document.

Knowledge content (`knowledge` in ground_truth.json)
---------------------------------------------------
How many bits a model must store to reach the floor, counted exactly from the generator's support:
a source's table is, per state, an ordered list of `branching` distinct successors out of A words
(the rank fixes which successor gets which q), so naming one list takes
log2(A! / (A - b)!) bits, and the table of K sources with S states each takes

    successor_bits = K * S * log2(A! / (A - b)!)

(the log of the number of distinct tables the generator can produce: the entropy of the tables
under a uniform prior over its support, an upper bound on their entropy under the Zipf-weighted
draw actually used). The probabilities q within a list are fixed by the rank and one exponent a_x
per state, drawn uniformly from [a/2, 3a/2]; at a precision of 1/2**EXPONENT_BITS of that range
they add `exponent_bits` = K * S * EXPONENT_BITS (0 when a = 0). `bits` is the sum. This is the
description-length view of model capacity of Allen-Zhu and Li 2024 (Physics of LMs 3.3, about 2
bits of knowledge stored per parameter): a dataset whose `bits` far exceed a model's parameter
count cannot be memorised by it, which is where extra expert parameters have something to hold.
`more sources`, a larger alphabet or more successors each raise it; the default mixture's is about
131k bits (4 sources x 256 states x 16 successors x ~8 bits).

Determinism: everything is drawn from numpy PCG64 generators seeded by explicit tuples
(seed, purpose, index): the alphabet, each source's tables, and every chunk of documents, so a chunk
can be regenerated on its own. Sampling uses only IEEE-exact arithmetic on the generator's doubles;
the tables pass through libm `pow`/`log`, whose last-ulp differences between builds would change a
draw only with probability ~1e-16 per draw.

CLI (docs/interfaces.md):
    python -m nanigpt.data.synthetic --name NAME --spec-json '<json dict>' --out DIR
    (or `--spec-json @PATH`, a file holding the JSON: the graph's results/specs/datasets/NAME.json)
writes DIR/train.parquet, DIR/val.parquet (columns text, source_id, doc_id; one row group per
chunk) and DIR/ground_truth.json, each atomically.
"""

# The project logs with f-strings (seed conventions); ruff's G004 says otherwise.

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from nanigpt.io import atomic_path, json_arg, write_json_atomic
from nanigpt.keys import check_keys

log = logging.getLogger(__name__)

GROUND_TRUTH_VERSION = 1
KINDS = ("markov_mixture",)
MAX_STATES = 1 << 20  # alphabet_size**order per source
MAX_TABLE_WORK = 1 << 28  # num_sources * states * alphabet_size: race keys drawn to build tables
MAX_ALPHABET = 1 << 16
EXPONENT_BITS = 4  # precision of a state's Zipf exponent counted in the knowledge bits
MAX_BIGRAM_ALPHABET = 1024  # plug-in bigram counts kept only up to this alphabet (A*A counters)
CHUNK_SYMBOLS = 1 << 20  # about 5 MB of text per chunk (= parquet row group)

# Purposes mixed into the seed tuple so that no two streams share a generator.
_SEED_ALPHABET = 0
_SEED_SOURCE = 1
_SEED_SPLIT = {"train": 2, "val": 3}

SCHEMA = pa.schema([("text", pa.string()), ("source_id", pa.int32()), ("doc_id", pa.int64())])


class SpecError(ValueError):
    """A dataset definition that cannot be generated; the message names the key."""


# --------------------------------------------------------------------------------------------
# The dataset definition


@dataclass(frozen=True)
class SyntheticSpec:
    """One dataset definition from the workflow config (`datasets.<name>`)."""

    kind: str = "markov_mixture"
    seed: int = 0
    num_sources: int = 4
    order: int = 2
    alphabet_size: int = 64
    branching: int = 8
    zipf_exponent: float = 1.1
    uniform_mix: float = 0.02
    doc_symbols: tuple[int, int] = (64, 256)
    train_documents: int = 4000
    val_documents: int = 400
    mixture_weights: tuple[float, ...] | None = None  # None: uniform over sources

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> SyntheticSpec:
        if not isinstance(spec, dict):
            raise SpecError(f"dataset spec: expected a JSON object, got {type(spec).__name__}")
        check_keys(spec, [f.name for f in dataclasses.fields(cls)], error=SpecError)
        values = dict(spec)
        if "doc_symbols" in values:
            values["doc_symbols"] = _as_tuple(values["doc_symbols"], "doc_symbols")
        if values.get("mixture_weights") is not None:
            values["mixture_weights"] = _as_tuple(values["mixture_weights"], "mixture_weights")
        out = cls(**values)
        out.validate()
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["doc_symbols"] = list(self.doc_symbols)
        d["mixture_weights"] = list(self.weights())
        return d

    @property
    def num_states(self) -> int:
        return self.alphabet_size**self.order

    def weights(self) -> tuple[float, ...]:
        if self.mixture_weights is None:
            return tuple(1.0 / self.num_sources for _ in range(self.num_sources))
        return tuple(float(w) for w in self.mixture_weights)

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise SpecError(f"dataset spec key 'kind': got {self.kind!r}, expected one of {KINDS}")
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("num_sources", self.num_sources, 1, 4096)
        _check_int("order", self.order, 1, 64)
        _check_int("alphabet_size", self.alphabet_size, 2, MAX_ALPHABET)
        _check_int("branching", self.branching, 1, self.alphabet_size)
        _check_float("zipf_exponent", self.zipf_exponent, 0.0, 10.0, low_open=False)
        _check_float("uniform_mix", self.uniform_mix, 0.0, 1.0, low_open=True)
        if self.num_states > MAX_STATES:
            raise SpecError(
                f"dataset spec keys 'alphabet_size'/'order': alphabet_size**order = "
                f"{self.alphabet_size}**{self.order} = {self.num_states} states per source, "
                f"expected at most {MAX_STATES}; lower the order or the alphabet"
            )
        work = self.num_sources * self.num_states * self.alphabet_size
        if work > MAX_TABLE_WORK:
            raise SpecError(
                f"dataset spec keys 'num_sources'/'alphabet_size'/'order': building the tables "
                f"needs num_sources * alphabet_size**(order+1) = {work} draws, expected at most "
                f"{MAX_TABLE_WORK}"
            )
        if len(self.doc_symbols) != 2:
            raise SpecError(
                f"dataset spec key 'doc_symbols': got {list(self.doc_symbols)}, expected [min, max]"
            )
        lo, hi = self.doc_symbols
        _check_int("doc_symbols", lo, self.order, 1 << 30, what="doc_symbols[0] (min)")
        _check_int("doc_symbols", hi, lo, 1 << 30, what="doc_symbols[1] (max)")
        _check_int("train_documents", self.train_documents, 1, 1 << 40)
        _check_int("val_documents", self.val_documents, 1, 1 << 40)
        if self.mixture_weights is not None:
            w = self.mixture_weights
            if len(w) != self.num_sources:
                raise SpecError(
                    f"dataset spec key 'mixture_weights': got {len(w)} weights, expected "
                    f"num_sources = {self.num_sources}"
                )
            for i, x in enumerate(w):
                _check_float("mixture_weights", x, 0.0, 1.0, low_open=False, what=f"weight {i}")
            if abs(sum(w) - 1.0) > 1e-6:
                raise SpecError(
                    f"dataset spec key 'mixture_weights': got {list(w)} summing to {sum(w)!r}, "
                    f"expected probabilities that sum to 1"
                )


def _as_tuple(value: Any, key: str) -> tuple:
    if not isinstance(value, list | tuple):
        raise SpecError(f"dataset spec key '{key}': got {value!r}, expected a list")
    return tuple(value)


def _check_int(key: str, value: Any, lo: int, hi: int, what: str | None = None) -> None:
    label = what or "value"
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"dataset spec key '{key}': {label} {value!r} is not an integer")
    if not lo <= value <= hi:
        raise SpecError(
            f"dataset spec key '{key}': {label} {value}, expected {lo} <= {label} <= {hi}"
        )


def _check_float(
    key: str, value: Any, lo: float, hi: float, low_open: bool, what: str | None = None
) -> None:
    label = what or "value"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SpecError(f"dataset spec key '{key}': {label} {value!r} is not a finite number")
    ok = (lo < value if low_open else lo <= value) and value <= hi
    if not ok:
        bound = f"{lo} {'<' if low_open else '<='} {label} <= {hi}"
        raise SpecError(f"dataset spec key '{key}': {label} {value}, expected {bound}")


# --------------------------------------------------------------------------------------------
# One source: a sparse Markov chain with a uniform component


@dataclass
class MarkovSource:
    """P(s | x) = (1 - uniform_mix) * q(s | x) + uniform_mix / alphabet_size.

    States are base-`alphabet_size` numbers of the last `order` symbols, oldest first, so the
    state after emitting s from x is (x mod A**(order-1)) * A + s.
    `successors[x]` (S, b) are distinct symbols, `probs[x]` their q (rows sum to 1).
    """

    alphabet_size: int
    order: int
    successors: np.ndarray  # (S, b) int32
    probs: np.ndarray  # (S, b) float64
    uniform_mix: float
    stationary: np.ndarray = field(init=False)  # (S,) float64

    def __post_init__(self) -> None:
        self.successors = np.ascontiguousarray(self.successors, dtype=np.int32)
        self.probs = np.ascontiguousarray(self.probs, dtype=np.float64)
        S = self.alphabet_size**self.order
        if self.successors.shape != self.probs.shape or self.successors.shape[0] != S:
            raise ValueError(
                f"successors {self.successors.shape} and probs {self.probs.shape} must both be "
                f"(alphabet_size**order = {S}, branching)"
            )
        if not np.allclose(self.probs.sum(axis=1), 1.0, atol=1e-12):
            raise ValueError("every row of probs must sum to 1")
        self.stationary = stationary_distribution(self)

    @property
    def num_states(self) -> int:
        return self.successors.shape[0]

    def next_states(self) -> np.ndarray:
        """(S, b) state reached from each state through each sparse successor."""
        keep = self.alphabet_size ** (self.order - 1)
        x = np.arange(self.num_states, dtype=np.int64)
        return (x % keep)[:, None] * self.alphabet_size + self.successors

    def row_entropies(self) -> np.ndarray:
        """(S,) entropy in nats of P(. | x), summed over all A symbols in O(b) per state."""
        A, eps, b = self.alphabet_size, self.uniform_mix, self.successors.shape[1]
        p = (1.0 - eps) * self.probs + eps / A
        h = -(p * np.log(p)).sum(axis=1)
        floor = eps / A
        return h - (A - b) * floor * math.log(floor)

    def entropy_rate(self) -> float:
        """Nats per symbol: -sum_x pi(x) sum_s P(s|x) ln P(s|x)."""
        return float(self.stationary @ self.row_entropies())

    def bytes_per_symbol(self, word_bytes: np.ndarray) -> float:
        """Expected utf-8 bytes of the next emitted symbol under the stationary distribution."""
        eps = self.uniform_mix
        sparse = (self.probs * word_bytes[self.successors]).sum(axis=1)
        per_state = (1.0 - eps) * sparse + eps * float(word_bytes.mean())
        return float(self.stationary @ per_state)

    def initial_entropy(self) -> float:
        """Nats: entropy of pi, the expected cost of a document's first `order` symbols."""
        pi = self.stationary[self.stationary > 0]
        return float(-(pi * np.log(pi)).sum())

    def dense_transition(self) -> np.ndarray:
        """(S, A) next-symbol matrix P(s | x); for tests and small chains."""
        P = np.full((self.num_states, self.alphabet_size), self.uniform_mix / self.alphabet_size)
        rows = np.arange(self.num_states)[:, None]
        P[rows, self.successors] += (1.0 - self.uniform_mix) * self.probs
        return P

    def symbol_log_probs(self, states: np.ndarray, symbols: np.ndarray) -> np.ndarray:
        """ln P(symbols[i] | states[i]), elementwise."""
        match = self.successors[states] == symbols[:, None]
        q = (self.probs[states] * match).sum(axis=1)
        return np.log((1.0 - self.uniform_mix) * q + self.uniform_mix / self.alphabet_size)


def stationary_distribution(
    source: MarkovSource, tol: float = 1e-14, max_iter: int = 200_000
) -> np.ndarray:
    """pi with pi = pi P over states, by power iteration in O(S * b) per step.

    The sparse part moves mass along `next_states`; the uniform part drops the oldest symbol
    and spreads the mass evenly over the A possible new ones.
    """
    S, A, eps = source.num_states, source.alphabet_size, source.uniform_mix
    keep = A ** (source.order - 1)
    nxt = source.next_states().ravel()
    sparse_w = (1.0 - eps) * source.probs
    suffix = np.arange(S, dtype=np.int64) % keep
    pi = np.full(S, 1.0 / S)
    for it in range(max_iter):
        new = np.bincount(nxt, weights=(pi[:, None] * sparse_w).ravel(), minlength=S)
        new += np.repeat(np.bincount(suffix, weights=pi, minlength=keep) * (eps / A), A)
        new /= new.sum()
        delta = float(np.abs(new - pi).sum())
        pi = new
        if delta < tol:
            log.debug(f"stationary distribution converged after {it + 1} iterations")
            return pi
    raise RuntimeError(
        f"stationary distribution did not converge in {max_iter} iterations "
        f"(last L1 change {delta:.3g}); raise uniform_mix"
    )


def entropy_rate_dense(transition: np.ndarray, stationary: np.ndarray) -> float:
    """-sum_i pi_i sum_j P_ij ln P_ij for a dense matrix (zero entries contribute 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(transition > 0, transition * np.log(transition), 0.0)
    return float(-(stationary * terms.sum(axis=1)).sum())


# --------------------------------------------------------------------------------------------
# The mixture: alphabet + sources


def make_alphabet(spec: SyntheticSpec) -> list[str]:
    """`alphabet_size` distinct lowercase words of 2-6 letters (longer only when needed)."""
    rng = np.random.default_rng([spec.seed, _SEED_ALPHABET])
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words: list[str] = []
    seen: set[str] = set()
    min_len = 2
    while len(words) < spec.alphabet_size:
        # Bump the shortest length once short words run out, so this always terminates.
        while 26**min_len < 4 * spec.alphabet_size and min_len < 4:
            min_len += 1
        n = int(rng.integers(min_len, min_len + 5))
        word = "".join(letters[rng.integers(0, 26, n)])
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def build_source(spec: SyntheticSpec, source_id: int) -> MarkovSource:
    """Seeded sparse chain for one source (see the module docstring for the recipe)."""
    A, b, S, a = spec.alphabet_size, spec.branching, spec.num_states, spec.zipf_exponent
    rng = np.random.default_rng([spec.seed, _SEED_SOURCE, source_id])
    ranks = np.arange(1, max(A, b) + 1, dtype=np.float64)
    zipf = ranks**-a
    inverse_word_weight = (1.0 / zipf[:A])[rng.permutation(A)]  # this source's favourite words
    successors = np.empty((S, b), dtype=np.int32)
    rows_per_block = max(1, (1 << 22) // A)
    for start in range(0, S, rows_per_block):
        stop = min(S, start + rows_per_block)
        # Exponential race (Gumbel top-k without the logs): with E ~ Exp(1), the b smallest
        # E_s / w_s are a weighted draw without replacement, in the order successive weighted
        # draws would produce them.
        keys = rng.standard_exponential(size=(stop - start, A)) * inverse_word_weight
        top = np.argpartition(keys, b - 1, axis=1)[:, :b]
        order = np.argsort(np.take_along_axis(keys, top, axis=1), axis=1, kind="stable")
        successors[start:stop] = np.take_along_axis(top, order, axis=1)
    # Each state gets its own exponent in [a/2, 3a/2]: some contexts nearly decide the next
    # word, others leave it open, so the per-state entropies (and what a model gains by
    # learning a state) vary instead of being one number.
    state_exponent = a * rng.uniform(0.5, 1.5, size=(S, 1))
    probs = ranks[:b] ** -state_exponent
    probs /= probs.sum(axis=1, keepdims=True)
    return MarkovSource(A, spec.order, successors, probs, spec.uniform_mix)


@dataclass
class MarkovMixture:
    spec: SyntheticSpec
    alphabet: list[str]
    sources: list[MarkovSource]

    @classmethod
    def build(cls, spec: SyntheticSpec) -> MarkovMixture:
        return cls(
            spec, make_alphabet(spec), [build_source(spec, k) for k in range(spec.num_sources)]
        )

    def __post_init__(self) -> None:
        rendered = [f"{w} ".encode() for w in self.alphabet]
        self.word_bytes = np.array([len(r) for r in rendered], dtype=np.int64)
        width = int(self.word_bytes.max())
        self.word_table = np.zeros((len(rendered), width), dtype=np.uint8)
        for i, r in enumerate(rendered):
            self.word_table[i, : len(r)] = np.frombuffer(r, dtype=np.uint8)
        self.word_mask = np.arange(width)[None, :] < self.word_bytes[:, None]
        weights = np.array(self.spec.weights(), dtype=np.float64)
        self.weights = weights / weights.sum()  # the spec allows a 1e-6 slack in the sum
        cum = np.cumsum(self.weights)
        cum[-1] = 1.0
        self.cum_weights = cum
        # Stacked tables so one gather serves every document of a chunk, whatever its source.
        self.successors = np.concatenate([s.successors for s in self.sources])
        cum_q = np.concatenate([np.cumsum(s.probs, axis=1) for s in self.sources])
        # The last column is 1 by construction; comparing against the others gives the rank.
        self.cum_probs_inner = np.ascontiguousarray(cum_q[:, :-1])
        self.cum_stationary = []
        for s in self.sources:
            c = np.cumsum(s.stationary)
            c[-1] = 1.0
            self.cum_stationary.append(c)

    def render(self, symbols: np.ndarray, doc_offsets: np.ndarray) -> tuple[pa.Array, np.ndarray]:
        """utf-8 text of each document as an arrow string array, and its byte length."""
        lens = self.word_bytes[symbols]
        ends = np.cumsum(lens)
        # Gather fixed-width padded words, then drop the padding: two vectorised passes.
        data = self.word_table[symbols][self.word_mask[symbols]]
        total = len(data)
        byte_offsets = np.concatenate([[0], ends])[doc_offsets]
        if total >= 1 << 31:
            raise ValueError("a chunk of text above 2 GiB; lower CHUNK_SYMBOLS")
        text = pa.StringArray.from_buffers(
            len(doc_offsets) - 1, pa.py_buffer(byte_offsets.astype(np.int32)), pa.py_buffer(data)
        )
        return text, np.diff(byte_offsets)


# --------------------------------------------------------------------------------------------
# Generation


@dataclass
class DocumentChunk:
    symbols: np.ndarray  # flat int32, documents back to back
    doc_offsets: np.ndarray  # (n + 1,) int64 into symbols
    source_ids: np.ndarray  # (n,) int32
    doc_ids: np.ndarray  # (n,) int64


def docs_per_chunk(spec: SyntheticSpec) -> int:
    return max(1, CHUNK_SYMBOLS // spec.doc_symbols[1])


def generate_chunk(
    mixture: MarkovMixture, split: str, chunk_index: int, first_doc_id: int, n_docs: int
) -> DocumentChunk:
    """Documents of one chunk, from a generator seeded by (seed, split, chunk_index) alone."""
    spec = mixture.spec
    A, order, eps, S = spec.alphabet_size, spec.order, spec.uniform_mix, spec.num_states
    keep = A ** (order - 1)
    rng = np.random.default_rng([spec.seed, _SEED_SPLIT[split], chunk_index])
    src = np.searchsorted(mixture.cum_weights, rng.random(n_docs), side="right")
    src = np.minimum(src, spec.num_sources - 1).astype(np.int32)
    lengths = rng.integers(spec.doc_symbols[0], spec.doc_symbols[1] + 1, n_docs)
    init_u = rng.random(n_docs)
    state = np.empty(n_docs, dtype=np.int64)
    for k in range(spec.num_sources):
        mask = src == k
        state[mask] = np.searchsorted(mixture.cum_stationary[k], init_u[mask], side="right")
    state = np.minimum(state, S - 1)

    # Work in order of decreasing length so the documents still running are a prefix.
    by_len = np.argsort(-lengths, kind="stable")
    lengths_sorted = lengths[by_len]
    state = state[by_len]
    row_base = src[by_len].astype(np.int64) * S
    max_len = int(lengths_sorted[0])
    out = np.zeros((n_docs, max_len), dtype=np.int32)
    for j in range(order):  # the first `order` symbols are the digits of the initial state
        out[:, j] = (state // A ** (order - 1 - j)) % A
    active = n_docs
    for t in range(order, max_len):
        while lengths_sorted[active - 1] <= t:
            active -= 1
        st = state[:active]
        rows = row_base[:active] + st
        u = rng.random(active)
        # One uniform per symbol: u < eps picks the uniform component, and u / eps is then
        # itself uniform; otherwise (u - eps) / (1 - eps) is uniform and picks a successor.
        uniform_sym = np.minimum((u * (A / eps)).astype(np.int64), A - 1)
        v = (u - eps) / (1.0 - eps) if eps < 1.0 else u
        rank = (v[:, None] >= mixture.cum_probs_inner[rows]).sum(axis=1)
        sparse_sym = mixture.successors[rows, rank]
        sym = np.where(u < eps, uniform_sym, sparse_sym)
        out[:active, t] = sym
        state[:active] = (st % keep) * A + sym

    unsort = np.empty_like(by_len)
    unsort[by_len] = np.arange(n_docs)
    out = out[unsort]
    symbols = out[np.arange(max_len)[None, :] < lengths[:, None]]
    doc_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    doc_ids = np.arange(first_doc_id, first_doc_id + n_docs, dtype=np.int64)
    return DocumentChunk(symbols, doc_offsets, src, doc_ids)


def document_log_likelihoods(
    mixture: MarkovMixture, symbols: np.ndarray, doc_offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(start, rest), each (n_docs, K): ln pi_k(first `order` symbols) and the sum of
    ln P_k(s_t | x_t) over the remaining symbols, for every document under every source."""
    spec = mixture.spec
    A, order = spec.alphabet_size, spec.order
    n_docs = len(doc_offsets) - 1
    K = spec.num_sources
    n = len(symbols)
    doc_of = np.repeat(np.arange(n_docs), np.diff(doc_offsets))
    pos_in_doc = np.arange(n) - doc_offsets[doc_of]
    # state_t = base-A number of symbols t-order .. t-1 (valid where pos_in_doc >= order)
    sym64 = symbols.astype(np.int64)
    state = np.zeros(n, dtype=np.int64)
    for j in range(order):
        lag = order - j
        shifted = np.zeros(n, dtype=np.int64)
        shifted[lag:] = sym64[:-lag]
        state = state * A + shifted
    scored = pos_in_doc >= order
    states_at, symbols_at, docs_at = state[scored], sym64[scored], doc_of[scored]
    first = doc_offsets[:-1]
    init_state = np.zeros(n_docs, dtype=np.int64)
    for j in range(order):
        init_state = init_state * A + sym64[first + j]
    start = np.empty((n_docs, K))
    rest = np.empty((n_docs, K))
    for k, source in enumerate(mixture.sources):
        start[:, k] = np.log(source.stationary[init_state])
        lp = source.symbol_log_probs(states_at, symbols_at)
        rest[:, k] = np.bincount(docs_at, weights=lp, minlength=n_docs)
    return start, rest


def _neg_log_mix(log_w: np.ndarray, ll: np.ndarray) -> np.ndarray:
    """-ln sum_k w_k exp(ll[:, k]) per row, stable; sources with w = 0 drop out."""
    z = ll + log_w
    m = z.max(axis=1, keepdims=True)
    return -(m[:, 0] + np.log(np.exp(z - m).sum(axis=1)))


@dataclass
class SplitStats:
    """Running totals for one split; the val split also scores the true model."""

    documents: int = 0
    symbols: int = 0
    bytes: int = 0
    bayes_nats: float = 0.0
    bayes_start_nats: float = 0.0
    oracle_nats: float = 0.0
    unigram: np.ndarray | None = None
    bigram: np.ndarray | None = None
    first_unigram: np.ndarray | None = None


def _score(mixture: MarkovMixture, chunk: DocumentChunk, stats: SplitStats) -> None:
    A = mixture.spec.alphabet_size
    with np.errstate(divide="ignore"):
        log_w = np.log(mixture.weights)
    start, rest = document_log_likelihoods(mixture, chunk.symbols, chunk.doc_offsets)
    stats.bayes_nats += float(_neg_log_mix(log_w, start + rest).sum())
    stats.bayes_start_nats += float(_neg_log_mix(log_w, start).sum())
    rows = np.arange(len(chunk.source_ids))
    stats.oracle_nats += float(-(start + rest)[rows, chunk.source_ids].sum())
    # Plug-in baselines (in-sample counts on val): unigram, and bigram with the first
    # symbol of each document charged under the unigram.
    if stats.unigram is None:
        stats.unigram = np.zeros(A, dtype=np.int64)
        stats.first_unigram = np.zeros(A, dtype=np.int64)
        if A <= MAX_BIGRAM_ALPHABET:
            stats.bigram = np.zeros(A * A, dtype=np.int64)
    stats.unigram += np.bincount(chunk.symbols, minlength=A)
    stats.first_unigram += np.bincount(chunk.symbols[chunk.doc_offsets[:-1]], minlength=A)
    if stats.bigram is not None:
        s = chunk.symbols.astype(np.int64)
        pair = s[:-1] * A + s[1:]
        not_boundary = np.ones(len(s) - 1, dtype=bool)
        not_boundary[chunk.doc_offsets[1:-1] - 1] = False
        stats.bigram += np.bincount(pair[not_boundary], minlength=A * A)


def _plugin_nats(stats: SplitStats) -> tuple[float, float | None]:
    def xlogx_sum(c: np.ndarray) -> float:
        c = c[c > 0].astype(np.float64)
        return float((c * np.log(c)).sum())

    uni = stats.unigram
    n = float(uni.sum())
    unigram_nats = n * math.log(n) - xlogx_sum(uni)
    if stats.bigram is None:
        return unigram_nats, None
    A = len(uni)
    pairs = stats.bigram.reshape(A, A)
    context = pairs.sum(axis=1)
    cond = xlogx_sum(context) - xlogx_sum(pairs)  # -sum c_ab ln(c_ab / c_a.)
    first = stats.first_unigram
    first_cost = -float((first[first > 0] * np.log(uni[first > 0] / n)).sum())
    return unigram_nats, cond + first_cost


def _arrow_ints(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    # Zero-copy, and unlike pa.array(ndarray) it does not import pandas (seconds on a cold start).
    data = np.ascontiguousarray(values, dtype=type_.to_pandas_dtype())
    return pa.Array.from_buffers(type_, len(data), [None, pa.py_buffer(data)])


def write_split(
    mixture: MarkovMixture, split: str, n_docs: int, first_doc_id: int, path: Path, name: str
) -> SplitStats:
    """Stream one split to parquet, one row group per chunk; score val under the true model."""
    per_chunk = docs_per_chunk(mixture.spec)
    stats = SplitStats()
    with (
        atomic_path(path) as tmp,
        pq.ParquetWriter(tmp, SCHEMA, compression="zstd") as writer,
        tqdm(total=n_docs, unit="doc", desc=f"{name}/{split}", disable=None) as bar,
    ):
        for chunk_index, begin in enumerate(range(0, n_docs, per_chunk)):
            count = min(per_chunk, n_docs - begin)
            chunk = generate_chunk(mixture, split, chunk_index, first_doc_id + begin, count)
            text, doc_bytes = mixture.render(chunk.symbols, chunk.doc_offsets)
            table = pa.Table.from_arrays(
                [
                    text,
                    _arrow_ints(chunk.source_ids, pa.int32()),
                    _arrow_ints(chunk.doc_ids, pa.int64()),
                ],
                schema=SCHEMA,
            )
            writer.write_table(table, row_group_size=count)
            stats.documents += count
            stats.symbols += len(chunk.symbols)
            stats.bytes += int(doc_bytes.sum())
            if split == "val":
                _score(mixture, chunk, stats)
            bar.update(count)
    return stats


# --------------------------------------------------------------------------------------------
# Ground truth


def _bits_per_byte(nats: float, n_bytes: float) -> float:
    return nats / (math.log(2) * n_bytes)


def knowledge_bits(spec: SyntheticSpec) -> dict[str, Any]:
    """Bits of the transition tables (module docstring, "Knowledge content"): exact counts."""
    A, b = spec.alphabet_size, spec.branching
    per_list = (math.lgamma(A + 1) - math.lgamma(A - b + 1)) / math.log(2)  # log2 A!/(A-b)!
    tables = spec.num_sources * spec.num_states
    successor = tables * per_list
    exponent = tables * EXPONENT_BITS if spec.zipf_exponent > 0 else 0.0
    return {
        "bits": successor + exponent,
        "successor_bits": successor,
        "exponent_bits": exponent,
        "bits_per_successor_list": per_list,
        "tables": tables,
        "definition": (
            "num_sources * alphabet_size**order states, each an ordered list of branching "
            "successors out of alphabet_size words (log2 A!/(A-b)! bits) plus its Zipf exponent "
            f"at {EXPONENT_BITS} bits; the log2 of the generator's number of distinct tables"
        ),
    }


def ground_truth(
    name: str, mixture: MarkovMixture, train: SplitStats, val: SplitStats
) -> dict[str, Any]:
    spec = mixture.spec
    lo, hi = spec.doc_symbols
    mean_len = (lo + hi) / 2
    sources = []
    for k, s in enumerate(mixture.sources):
        rate = s.entropy_rate()
        bps = s.bytes_per_symbol(mixture.word_bytes)
        sources.append(
            {
                "source_id": k,
                "weight": float(mixture.weights[k]),
                "entropy_rate_nats_per_symbol": rate,
                "bytes_per_symbol": bps,
                "bits_per_byte": _bits_per_byte(rate, bps),
                "initial_state_entropy_nats": s.initial_entropy(),
                "num_states": s.num_states,
            }
        )
    w = mixture.weights
    rates = np.array([s["entropy_rate_nats_per_symbol"] for s in sources])
    bps = np.array([s["bytes_per_symbol"] for s in sources])
    h0 = np.array([s["initial_state_entropy_nats"] for s in sources])
    length_nats = math.log(hi - lo + 1)
    unigram_nats, bigram_nats = _plugin_nats(val)
    floor = _bits_per_byte(val.bayes_nats, val.bytes)
    return {
        "version": GROUND_TRUTH_VERSION,
        "dataset": name,
        "kind": spec.kind,
        "seed": spec.seed,
        "params": spec.to_dict(),
        "mixture_weights": [float(x) for x in w],
        "knowledge": knowledge_bits(spec),
        "alphabet": mixture.alphabet,
        "sources": sources,
        "floor_bits_per_byte": floor,
        "floor_nats_per_symbol": val.bayes_nats / val.symbols,
        "floor_definition": (
            "loss of the Bayes-optimal predictor (true sources, posterior over sources updated "
            "symbol by symbol per document, first `order` symbols charged under the mixture of "
            "stationary distributions) on the val split, in bits per utf-8 byte of val text; "
            "document lengths (EOT positions) not charged"
        ),
        "floor_incl_doc_length_bits_per_byte": _bits_per_byte(
            val.bayes_nats + val.documents * length_nats, val.bytes
        ),
        "doc_length_nats_per_doc": length_nats,
        "doc_start": {
            "symbols_per_doc": spec.order,
            "bayes_nats_total": val.bayes_start_nats,
            "bayes_nats_per_doc": val.bayes_start_nats / val.documents,
            "share_of_floor": val.bayes_start_nats / val.bayes_nats,
        },
        "oracle_bits_per_byte": _bits_per_byte(val.oracle_nats, val.bytes),
        "oracle_definition": "true-model loss on val when each document's source is known",
        "expected_rate_bits_per_byte": _bits_per_byte(float(w @ rates), float(w @ bps)),
        "expected_oracle_bits_per_byte": _bits_per_byte(
            float(w @ (h0 + (mean_len - spec.order) * rates)), float(w @ bps) * mean_len
        ),
        "unigram_plugin_bits_per_byte": _bits_per_byte(unigram_nats, val.bytes),
        "bigram_plugin_bits_per_byte": (
            None if bigram_nats is None else _bits_per_byte(bigram_nats, val.bytes)
        ),
        "counts": {
            split: {"documents": st.documents, "symbols": st.symbols, "bytes": st.bytes}
            for split, st in (("train", train), ("val", val))
        },
    }


def generate_dataset(name: str, spec: SyntheticSpec, out_dir: str | Path) -> dict[str, Any]:
    """Write train.parquet, val.parquet and ground_truth.json under out_dir; return the truth."""
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    mixture = MarkovMixture.build(spec)
    t_tables = time.perf_counter() - t0
    log.info(
        f"{name}: {spec.num_sources} sources x {spec.num_states} states, "
        f"branching {spec.branching}, tables in {t_tables:.2f}s"
    )
    t1 = time.perf_counter()
    train = write_split(mixture, "train", spec.train_documents, 0, out_dir / "train.parquet", name)
    t_train = time.perf_counter() - t1
    val = write_split(
        mixture, "val", spec.val_documents, spec.train_documents, out_dir / "val.parquet", name
    )
    t_all = time.perf_counter() - t1
    truth = ground_truth(name, mixture, train, val)
    write_json_atomic(out_dir / "ground_truth.json", truth)
    total_mb = (train.bytes + val.bytes) / 1e6
    log.info(
        f"{name}: train {train.bytes / 1e6:.2f} MB in {t_train:.2f}s "
        f"({train.bytes / 1e6 / max(t_train, 1e-9):.1f} MB/s generate+write); "
        f"all {total_mb:.2f} MB in {t_all:.2f}s ({total_mb / max(t_all, 1e-9):.1f} MB/s incl. val scoring)"
    )
    log.info(
        f"{name}: floor {truth['floor_bits_per_byte']:.4f} bits/byte (oracle "
        f"{truth['oracle_bits_per_byte']:.4f}, unigram {truth['unigram_plugin_bits_per_byte']:.4f})"
    )
    return truth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.data.synthetic", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--name", required=True, help="dataset name (recorded in the JSON)")
    parser.add_argument(
        "--spec-json", required=True, help="dataset definition as a JSON object, or @path to it"
    )
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        raw = json_arg(args.spec_json, what="--spec-json")
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    try:
        spec = SyntheticSpec.from_dict(raw)
    except SpecError as e:
        parser.error(f"dataset {args.name!r}: {e}")
    generate_dataset(args.name, spec, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
