"""results/moe/gain_vs_data.svg and the seed summaries of the MoE figures (issue 15)."""

from __future__ import annotations

import json

import pytest

from nanigpt.plots.moe_gain import gain, main
from nanigpt.scaling.seeds import base_run_id, summarise, verdict, worded


def write_run(root, dataset, arch, seed, loss, mlp_ratio=4.0, experts=None):
    rid = f"{dataset}_{arch}_s1_t200k_single" + (f"_seed{seed}" if seed else "")
    run_dir = root / rid
    run_dir.mkdir(parents=True)
    moe = {"num_experts": experts, "top_k": 1, "capacity_factor": 1.25} if experts else None
    model = {"n_layer": 1, "d_model": 32, "mlp_ratio": mlp_ratio, "moe": moe}
    (run_dir / "config.json").write_text(json.dumps({"run": {"model": model, "dataset": dataset}}))
    summary = {
        "run_id": rid, "dataset": dataset, "arch": arch, "seed": seed, "size": "s1",
        "arch_kind": "moe" if experts else "dense", "tokens_target": 200000,
        "tokens_trained": 200000, "params_total": 50000 if experts or mlp_ratio > 4 else 30000,
        "params_active": 30000, "params_non_embedding_active": 16000,
        "params_non_embedding_total": 16000, "flops_per_token": 1e5, "flops_total": 2e10,
        "final_val_loss": loss, "final_val_bpb": loss,
    }  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return str(run_dir / "summary.json")


def truth(root, dataset, bits):
    path = root / f"{dataset}_truth.json"
    path.write_text(json.dumps({"dataset": dataset, "knowledge": {"bits": bits}}))
    return str(path)


def test_gain_pairs_by_seed_and_words_overlapping_seeds_as_no_difference(tmp_path):
    summaries = []
    # solo: MoE minus dense = +0.01 and -0.01 over the seeds: no difference
    # big: MoE minus dense = -0.05 and -0.03: lower beyond the seed range
    for dataset, deltas in (("solo", (0.01, -0.01)), ("big", (-0.05, -0.03))):
        for seed, delta in enumerate(deltas):
            dense = 1.0 + 0.1 * seed  # seed-to-seed spread larger than the paired difference
            summaries.append(write_run(tmp_path, dataset, "dense", seed, dense))
            summaries.append(write_run(tmp_path, dataset, "moe", seed, dense + delta, experts=4))
            summaries.append(write_run(tmp_path, dataset, "densew4", seed, dense - 0.02, 16.0))
    truths = [truth(tmp_path, "solo", 32000.0), truth(tmp_path, "big", 512000.0)]
    _, result = gain(summaries, truths)
    by = {(r["dataset"], r["line"].split(",")[0].split(" ")[0]): r for r in result["summary"]}
    solo, big = by[("solo", "MoE")], by[("big", "MoE")]
    assert solo["verdict"] == "no difference" and not solo["beyond_spread"]
    assert big["verdict"] == "lower" and big["delta"] == pytest.approx(-0.04)
    assert (big["delta_lo"], big["delta_hi"]) == pytest.approx((-0.05, -0.03))
    assert big["bits_per_param"] == pytest.approx(512000 / 16000)
    assert by[("big", "dense")]["delta"] == pytest.approx(-0.02)
    assert result["control"] == "solo"
    out = tmp_path / "gain.svg"
    argv = ["--summaries", *summaries, "--ground-truth", *truths, "--out", str(out)]
    assert main([*argv, "--json-out", str(tmp_path / "gain.json")]) == 0
    assert out.read_text().startswith("<svg")


def test_gain_refuses_a_ground_truth_without_knowledge_bits(tmp_path, capsys):
    summaries = [write_run(tmp_path, "solo", "dense", 0, 1.0)]
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"dataset": "solo"}))
    argv = ["--summaries", *summaries, "--ground-truth", str(old), "--out", str(tmp_path / "x.svg")]
    assert main([*argv, "--json-out", str(tmp_path / "x.json")]) == 2
    assert "knowledge.bits" in capsys.readouterr().err


def test_seed_summaries():
    assert base_run_id("mix_moe_s1_t200k_single_seed3") == "mix_moe_s1_t200k_single"
    assert verdict([-0.1, 0.2]) == "no difference" and verdict([0.1]) == "one seed"
    assert verdict([0.1, 0.3]) == "higher"
    rows = [{"line": "a", "delta": d, "seed": s} for s, d in enumerate((0.1, 0.3))]
    (row,) = summarise(rows, ("line",))
    assert row["delta"] == pytest.approx(0.2) and row["seeds"] == 2 and row["beyond_spread"]
    assert worded(0.01, -0.01, 0.03, 2, "bits/byte").startswith("no difference")
