"""Knowledge bits of the synthetic tables (issue 15): exact counts of the generator's support."""

from __future__ import annotations

import json
import math

from nanigpt.data.synthetic import SyntheticSpec, build_source, generate_dataset, knowledge_bits


def test_knowledge_bits_count_the_ordered_successor_lists():
    spec = SyntheticSpec(num_sources=2, order=1, alphabet_size=3, branching=2, zipf_exponent=0.0)
    k = knowledge_bits(spec)
    assert k["tables"] == 2 * 3
    assert math.isclose(k["successor_bits"], 6 * math.log2(3 * 2), rel_tol=1e-12)
    assert k["exponent_bits"] == 0.0 and k["bits"] == k["successor_bits"]
    # The count is the generator's support: every ordered list of 2 of the 3 words occurs.
    seen = set()
    for seed in range(40):
        source = build_source(SyntheticSpec(**{**spec.to_dict(), "seed": seed}), 0)
        seen.update(tuple(row) for row in source.successors.tolist())
    assert len(seen) == math.perm(3, 2)


def test_knowledge_grows_with_sources_alphabet_and_successors():
    base = {"order": 1, "alphabet_size": 256, "branching": 16}
    bits = lambda **kw: knowledge_bits(SyntheticSpec(**{**base, **kw}))["bits"]  # noqa: E731
    assert bits(num_sources=16) == 4 * bits(num_sources=4)
    assert bits(num_sources=4, alphabet_size=1024) > 4 * bits(num_sources=4)
    assert bits(num_sources=4, branching=32) > 1.9 * bits(num_sources=4)


def test_ground_truth_reports_the_knowledge_bits(tmp_path):
    spec = SyntheticSpec(
        num_sources=2, order=1, alphabet_size=8, branching=2, train_documents=4, val_documents=2
    )
    generate_dataset("tiny", spec, tmp_path)
    truth = json.loads((tmp_path / "ground_truth.json").read_text())
    assert truth["knowledge"]["bits"] == knowledge_bits(spec)["bits"]
    assert truth["knowledge"]["exponent_bits"] == 2 * 8 * 4
