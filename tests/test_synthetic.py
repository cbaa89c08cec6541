"""Synthetic data: the floor is exact, sampling matches the model, output is deterministic."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from nanigpt.data import synthetic
from nanigpt.data.synthetic import (
    MarkovMixture,
    MarkovSource,
    SpecError,
    SyntheticSpec,
    document_log_likelihoods,
    entropy_rate_dense,
    generate_chunk,
    generate_dataset,
)

TINY = {
    "seed": 3,
    "num_sources": 3,
    "order": 2,
    "alphabet_size": 12,
    "branching": 3,
    "zipf_exponent": 1.0,
    "doc_symbols": [40, 80],
    "train_documents": 60,
    "val_documents": 200,
}


def binary_entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_entropy_rate_matches_hand_computation():
    # Order 1 over {0, 1}; eps = 0.1 puts 0.05 on each symbol, the sparse part the rest:
    # P(0->0) = 0.9*0.7 + 0.05 = 0.68, P(1->0) = 0.9*0.4 + 0.05 = 0.41.
    source = MarkovSource(
        alphabet_size=2,
        order=1,
        successors=np.array([[0, 1], [1, 0]]),
        probs=np.array([[0.7, 0.3], [0.6, 0.4]]),
        uniform_mix=0.1,
    )
    pi0 = 0.41 / (0.32 + 0.41)
    expected = pi0 * binary_entropy(0.32) + (1 - pi0) * binary_entropy(0.41)
    np.testing.assert_allclose(source.stationary, [pi0, 1 - pi0], rtol=1e-12)
    assert source.entropy_rate() == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(source.dense_transition(), [[0.68, 0.32], [0.41, 0.59]])


def test_sparse_computation_matches_dense_order_two():
    spec = SyntheticSpec.from_dict({**TINY, "alphabet_size": 4, "branching": 2})
    source = synthetic.build_source(spec, 1)
    A, S = spec.alphabet_size, spec.num_states
    P = source.dense_transition()  # (S, A) next-symbol probabilities
    T = np.zeros((S, S))  # state-to-state matrix
    for x in range(S):
        T[x, (x % A) * A + np.arange(A)] = P[x]
    values, vectors = np.linalg.eig(T.T)
    pi = np.real(vectors[:, np.argmin(np.abs(values - 1))])
    pi /= pi.sum()
    np.testing.assert_allclose(source.stationary, pi, atol=1e-12)
    assert source.entropy_rate() == pytest.approx(entropy_rate_dense(P, pi), rel=1e-12)
    assert entropy_rate_dense(T, pi) == pytest.approx(source.entropy_rate(), rel=1e-12)


def test_log_loss_and_plugin_entropy_converge_to_rate():
    # Documents start from the stationary distribution, so each is an independent stationary
    # stretch: the tolerance comes from the spread of per-document mean losses.
    spec = SyntheticSpec.from_dict(
        {**TINY, "num_sources": 1, "order": 1, "alphabet_size": 8, "doc_symbols": [400, 400]}
    )
    mixture = MarkovMixture.build(spec)
    source = mixture.sources[0]
    chunk = generate_chunk(mixture, "train", 0, 0, 300)
    _, rest = document_log_likelihoods(mixture, chunk.symbols, chunk.doc_offsets)
    per_doc = -rest[:, 0] / (400 - spec.order)
    tolerance = 4 * per_doc.std(ddof=1) / math.sqrt(len(per_doc))
    rate = source.entropy_rate()
    assert abs(per_doc.mean() - rate) < tolerance, (per_doc.mean(), rate, tolerance)

    # Plug-in conditional entropy H(X_t | X_{t-1}) from counts, Miller-Madow corrected.
    docs = chunk.symbols.reshape(300, 400).astype(np.int64)
    pairs = (docs[:, :-1] * 8 + docs[:, 1:]).ravel()
    counts = np.bincount(pairs, minlength=64).reshape(8, 8).astype(float)
    n = counts.sum()
    nz = counts > 0
    cond = counts / counts.sum(axis=1, keepdims=True)
    plugin = -(counts[nz] * np.log(cond[nz])).sum() / n
    plugin += (nz.sum() - 8) / (2 * n)
    assert abs(plugin - rate) < tolerance + 1e-3, (plugin, rate, tolerance)


def test_bayes_posterior_step_by_step_equals_closed_form():
    spec = SyntheticSpec.from_dict(TINY)
    mixture = MarkovMixture.build(spec)
    chunk = generate_chunk(mixture, "val", 0, 0, 5)
    start, rest = document_log_likelihoods(mixture, chunk.symbols, chunk.doc_offsets)
    closed = synthetic._neg_log_mix(np.log(mixture.weights), start + rest)
    A, order = spec.alphabet_size, spec.order
    for d in range(5):
        doc = chunk.symbols[chunk.doc_offsets[d] : chunk.doc_offsets[d + 1]]
        state = int(doc[0]) * A + int(doc[1])
        prior = np.array([s.stationary[state] for s in mixture.sources])
        loss = -math.log(float(mixture.weights @ prior))
        posterior = mixture.weights * prior / (mixture.weights @ prior)
        for sym in doc[order:]:
            p = np.array([s.dense_transition()[state, sym] for s in mixture.sources])
            predictive = float(posterior @ p)
            loss -= math.log(predictive)
            posterior = posterior * p / predictive
            state = (state % A) * A + int(sym)
        assert loss == pytest.approx(closed[d], rel=1e-10)


def test_ground_truth_floor_bounds(tmp_path):
    truth = generate_dataset("tiny", SyntheticSpec.from_dict(TINY), tmp_path)
    val = truth["counts"]["val"]
    nats = lambda bpb: bpb * math.log(2) * val["bytes"]  # noqa: E731
    floor, oracle = nats(truth["floor_bits_per_byte"]), nats(truth["oracle_bits_per_byte"])
    K = TINY["num_sources"]
    # Bayes <= known-source + ln K per document (uniform weights), and it cannot beat the
    # oracle by more than sampling noise; both sit near the analytic expectation.
    assert floor <= oracle + val["documents"] * math.log(K) + 1e-9
    assert floor >= oracle - 0.02 * oracle
    assert truth["oracle_bits_per_byte"] == pytest.approx(
        truth["expected_oracle_bits_per_byte"], rel=0.05
    )
    assert truth["floor_bits_per_byte"] >= 0.95 * truth["expected_rate_bits_per_byte"]
    assert truth["floor_bits_per_byte"] <= truth["bigram_plugin_bits_per_byte"]
    assert truth["floor_bits_per_byte"] <= truth["unigram_plugin_bits_per_byte"]
    assert truth["floor_incl_doc_length_bits_per_byte"] > truth["floor_bits_per_byte"]
    assert 0 < truth["doc_start"]["share_of_floor"] < 1
    for s in truth["sources"]:
        assert s["bits_per_byte"] == pytest.approx(
            s["entropy_rate_nats_per_symbol"] / (math.log(2) * s["bytes_per_symbol"])
        )
    assert json.loads((tmp_path / "ground_truth.json").read_text()) == truth


def test_text_decodes_to_labelled_documents(tmp_path):
    truth = generate_dataset("tiny", SyntheticSpec.from_dict(TINY), tmp_path)
    words = set(truth["alphabet"])
    assert len(words) == TINY["alphabet_size"]
    train = pq.read_table(tmp_path / "train.parquet").to_pylist()
    val = pq.read_table(tmp_path / "val.parquet").to_pylist()
    assert [r["doc_id"] for r in train + val] == list(range(60 + 200))
    lo, hi = TINY["doc_symbols"]
    for row in train + val:
        assert row["text"].endswith(" ")
        tokens = row["text"][:-1].split(" ")
        assert lo <= len(tokens) <= hi and set(tokens) <= words
        assert 0 <= row["source_id"] < TINY["num_sources"]
    assert sum(len(r["text"].encode()) for r in val) == truth["counts"]["val"]["bytes"]


def test_same_seed_same_bytes_other_seed_other_text(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "CHUNK_SYMBOLS", 1000)  # several row groups per split
    spec = SyntheticSpec.from_dict(TINY)
    generate_dataset("tiny", spec, tmp_path / "a")
    generate_dataset("tiny", spec, tmp_path / "b")
    generate_dataset("tiny", SyntheticSpec.from_dict({**TINY, "seed": 4}), tmp_path / "c")
    for name in ("train.parquet", "val.parquet", "ground_truth.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert pq.ParquetFile(tmp_path / "a" / "train.parquet").num_row_groups > 1
    a = pq.read_table(tmp_path / "a" / "train.parquet").column("text").to_pylist()
    c = pq.read_table(tmp_path / "c" / "train.parquet").column("text").to_pylist()
    assert a != c
    # A chunk depends only on (seed, split, chunk index): regenerate chunk 2 on its own.
    mixture = MarkovMixture.build(spec)
    per_chunk = synthetic.docs_per_chunk(spec)
    chunk = generate_chunk(mixture, "train", 2, 2 * per_chunk, per_chunk)
    text, _ = mixture.render(chunk.symbols, chunk.doc_offsets)
    assert text.to_pylist() == a[2 * per_chunk : 3 * per_chunk]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"bogus": 1}, "bogus"),
        ({"kind": "hmm"}, "kind"),
        ({"order": 0}, "order"),
        ({"alphabet_size": 0}, "alphabet_size"),
        ({"num_sources": 0}, "num_sources"),
        ({"branching": 13}, "branching"),
        ({"zipf_exponent": -1}, "zipf_exponent"),
        ({"uniform_mix": 0}, "uniform_mix"),
        ({"seed": 1.5}, "seed"),
        ({"doc_symbols": [80, 40]}, "doc_symbols"),
        ({"doc_symbols": [1, 40]}, "doc_symbols"),
        ({"train_documents": 0}, "train_documents"),
        ({"mixture_weights": [0.5, 0.3, 0.3]}, "mixture_weights"),
        ({"mixture_weights": [0.5, 0.5]}, "mixture_weights"),
        ({"alphabet_size": 2000, "order": 2}, "alphabet_size"),
    ],
)
def test_bad_spec_names_the_key(override, key):
    with pytest.raises(SpecError, match=key):
        SyntheticSpec.from_dict({**TINY, **override})


def test_defaults_and_round_trip():
    spec = SyntheticSpec.from_dict({})
    assert spec.weights() == (0.25,) * 4
    assert SyntheticSpec.from_dict(spec.to_dict()).to_dict() == spec.to_dict()


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "data" / "synthetic" / "tiny"
    spec = {**TINY, "train_documents": 20, "val_documents": 20}
    subprocess.run(
        [sys.executable, "-m", "nanigpt.data.synthetic", "--name", "tiny"]
        + ["--spec-json", json.dumps(spec), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    truth = json.loads((out / "ground_truth.json").read_text())
    assert truth["dataset"] == "tiny" and truth["params"]["seed"] == TINY["seed"]
    assert pq.read_table(out / "val.parquet").column_names == ["text", "source_id", "doc_id"]
    assert sorted(p.name for p in out.iterdir()) == [
        "ground_truth.json",
        "train.parquet",
        "val.parquet",
    ]
    with pytest.raises(SystemExit) as exc:
        synthetic.main(["--name", "bad", "--spec-json", '{"order": 0}', "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "'order'" in capsys.readouterr().err


def test_one_hot_weights_make_floor_the_oracle(tmp_path):
    spec = {**TINY, "train_documents": 5, "val_documents": 30, "mixture_weights": [0, 1, 0]}
    truth = generate_dataset("onehot", SyntheticSpec.from_dict(spec), tmp_path)
    assert set(pq.read_table(tmp_path / "val.parquet").column("source_id").to_pylist()) == {1}
    assert truth["floor_bits_per_byte"] == pytest.approx(truth["oracle_bits_per_byte"], rel=1e-12)
