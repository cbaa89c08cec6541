"""Pre-registered predictions (nanigpt.scaling.predict): planning, forecast, verdict, and the DAG
order that makes the forecast come first."""

from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
import polars as pl
import pytest

from nanigpt.graph.config import expand_runs, load_config
from nanigpt.model.flops import count
from nanigpt.scaling.fit import LawParams, fit_all, jsonable
from nanigpt.scaling.predict import (
    PREDICTION,
    HeldOutError,
    check,
    gate,
    held_out_points,
    held_out_run_ids,
    predict,
)
from tests.workflow_util import load_smoke, snakemake, write_config

LAW = LawParams(E=0.7, A=30.0, B=900.0, alpha=0.34, beta=0.42)


def fitted(noise: float):
    """A fit of 4 sizes x 4 budgets x 2 seeds drawn from LAW with `noise` in log-loss."""
    rng = np.random.default_rng(1)
    rows = [
        {
            "run_id": f"dense_{n:.0f}_{d:.0f}_s{seed}",
            "arch_kind": "dense",
            "tokens_trained": d,
            "params_non_embedding_active": n,
            "final_val_bpb": float(LAW.loss(n, d)) * math.exp(noise * rng.standard_normal()),
            "flops_total": 6 * n * d,
            "seed": seed,
            "floor_bpb": LAW.E,  # the data's exact floor: the fixed-floor fit too
        }
        for n in np.geomspace(1e5, 1e6, 4)
        for d in np.geomspace(1e7, 1e8, 4)
        for seed in (0, 1)
    ]
    runs = pl.DataFrame(rows)
    return runs, jsonable(fit_all(runs, bootstrap=30, seed=0))


HELD = {"run_id": "big", "arch_kind": "dense", "size": "x", "seed": 0, "n": 3e6, "d": 3e8}


def test_prediction_of_a_planted_law_holds_the_truth_and_the_verdict_reads_it():
    runs, fits = fitted(noise=0.003)
    point = {**HELD, "flops": 6 * HELD["n"] * HELD["d"]}
    result = predict(fits, runs, [point])
    row = result["held_out"][0]
    assert row["flops_over_largest_fitted"] == pytest.approx(9.0)
    free = row["predictions"]["free"]
    truth = float(LAW.loss(HELD["n"], HELD["d"]))
    assert free["loss"] == pytest.approx(truth, rel=0.01)
    lo, hi = free["interval"]
    nlo, nhi = free["interval_with_noise"]
    assert nlo <= lo <= truth <= hi <= nhi  # the seed noise widens the law's own interval
    assert result["seed_noise"]["dense"] == pytest.approx(0.003, rel=0.5)
    fixed = row["predictions"]["fixed_floor"]
    assert fixed["loss"] == pytest.approx(truth, rel=0.01)
    assert fixed["interval"][1] - fixed["interval"][0] <= hi - lo  # E known: a narrower interval

    summary = {"run_id": "big", "params_non_embedding_active": 3e6, "tokens_trained": 3e8}
    verdict = check(jsonable(result), [{**summary, "final_val_bpb": truth * 1.005}])
    law = verdict["points"][0]["laws"]["free"]
    assert law["relative_error"] == pytest.approx(1.005 * truth / free["loss"] - 1)
    assert law["within_1pct"] is (abs(law["relative_error"]) <= 0.01)
    far = check(jsonable(result), [{**summary, "final_val_bpb": truth * 1.5}])
    assert far["points"][0]["laws"]["free"]["meets_bar"] is False
    with pytest.raises(ValueError, match="prediction was for N=3000000.0, D=300000000.0"):
        check(jsonable(result), [{**summary, "tokens_trained": 1e8, "final_val_bpb": truth}])


def test_held_out_runs_are_planned_with_the_trainers_counts():
    config = load_config()
    runs = expand_runs(config)
    points = held_out_points(config, runs)
    assert points and {p["run_id"] for p in points} == set(held_out_run_ids(config, runs))
    for p in points:
        run = runs[p["run_id"]]
        acc = count(run["model"])
        assert p["n"] == acc.params.non_embedding_active
        assert p["d"] % (run["training"]["seq_len"] * run["training"]["batch_size"]) == 0
        assert p["flops"] == acc.train_flops_per_token * p["d"]
    assert gate(["a", "b"], ["c", "b"]) == [PREDICTION] and gate(["a"], ["c"]) == []


def test_a_held_out_sweep_sharing_runs_with_the_fit_is_refused():
    config = load_config()
    bad = copy.deepcopy(config)
    bad["sweeps"][config["scaling"]["held_out"]]["sizes"] = ["h5"]  # the headline's size
    bad["sweeps"][config["scaling"]["held_out"]]["archs"] = ["dense"]
    with pytest.raises(HeldOutError, match="shares run"):
        held_out_run_ids(bad, expand_runs(bad))
    bad = copy.deepcopy(config)
    bad["scaling"]["held_out"] = "nope"
    with pytest.raises(HeldOutError, match="unknown sweep 'nope'"):
        held_out_run_ids(bad, expand_runs(config))


def test_the_graph_trains_held_out_runs_only_after_the_prediction(tmp_path):
    """The DAG of the verdict on the smoke config with a held-out WSD sweep: the held-out job
    follows the prediction (prediction.json is its input), the fitted sweep's jobs do not."""
    config = load_smoke()
    config["sizes"]["d"] = {"n_layer": 2, "d_model": 48, "n_head": 2}
    config["sweeps"]["held"] = {
        "dataset": "tiny", "archs": ["dense"], "sizes": ["d"], "tokens": [4096], "cooldown": 0.2,
    }  # fmt: skip
    config["scaling"]["held_out"] = "held"
    path = write_config(tmp_path / "held.yaml", config)
    dot = snakemake(
        tmp_path, "--dag", "dot", "results/scaling/prediction_check.json", config=path
    ).stdout
    labels = dict(re.findall(r'^\s*(\d+)\[label = "([^"]*)"', dot, flags=re.M))
    edges = re.findall(r"^\s*(\d+) -> (\d+)", dot, flags=re.M)
    (predict,) = [n for n, label in labels.items() if label.startswith("predict_held_out")]
    trains = {n for n, label in labels.items() if label.startswith("train_")}
    held = {n for n in trains if "job_id: held_" in labels[n]}
    after_prediction = {b for a, b in edges if a == predict and b in trains}
    assert held and after_prediction == held, (labels, edges)


def test_a_device_plan_holds_held_out_runs_back_until_the_prediction_exists(tmp_path):
    """scripts/gpu_session.py plans without Snakemake: the same order, by the same lookup."""
    from nanigpt.scaling.predict import held_out_gate_for_plan

    config = load_config()
    runs = expand_runs(config)
    held = set(held_out_run_ids(config, runs))
    kept, sha = held_out_gate_for_plan(config, runs, None)
    assert sha is None and held and not held & set(kept) and len(kept) == len(runs) - len(held)
    stale = tmp_path / "prediction.json"
    stale.write_text(json.dumps({"held_out": [{"run_id": "other"}]}))
    with pytest.raises(HeldOutError, match="does not predict"):
        held_out_gate_for_plan(config, runs, stale)
    stale.write_text(json.dumps({"held_out": [{"run_id": r} for r in held]}))
    kept, sha = held_out_gate_for_plan(config, runs, stale)
    assert set(kept) == set(runs) and len(sha) == 64
