"""Scaling fits: recover a planted law, refuse bad data, aggregate summaries (issue 7)."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from nanigpt.scaling import aggregate, fit, isoflop
from nanigpt.scaling.fit import (
    LOWER_THROUGHOUT,
    NOT_LOWER_AT_TOP,
    OVERTAKES,
    PARAM_NAMES,
    FitError,
    FlopsPerToken,
    LawParams,
    allocation_exponents,
    bootstrap_weights,
    censored_interval,
    compute_optimal,
    crossover_text,
    fit_all,
    fit_law,
    overtaking_budget,
)

TRUE_LAW = LawParams(E=1.2, A=40.0, B=300.0, alpha=0.35, beta=0.3)


def planted_points(per_axis: int, noise: float = 0.01, seed: int = 1):
    """A per_axis x per_axis grid of (N, D) with losses from TRUE_LAW times lognormal noise."""
    rng = np.random.default_rng(seed)
    n, d = np.meshgrid(np.geomspace(1e5, 1e8, per_axis), np.geomspace(1e7, 1e10, per_axis))
    n, d = n.ravel(), d.ravel()
    loss = TRUE_LAW.loss(n, d) * np.exp(rng.normal(0.0, noise, n.size))
    return n, d, loss


@pytest.fixture(scope="module")
def small_and_large_fits():
    small = fit_law(*planted_points(4), bootstrap=100, seed=0)
    large = fit_law(*planted_points(9), bootstrap=100, seed=0)
    return small, large


def test_fit_recovers_planted_law_within_its_intervals(small_and_large_fits):
    for law in small_and_large_fits:
        assert law.n_bootstrap >= 90
        for name in PARAM_NAMES:
            lo, hi = law.ci(name)
            assert lo <= getattr(TRUE_LAW, name) <= hi, (name, lo, hi, law.params)
    _, large = small_and_large_fits
    assert large.params.alpha == pytest.approx(TRUE_LAW.alpha, abs=0.03)
    assert large.params.beta == pytest.approx(TRUE_LAW.beta, abs=0.03)
    assert abs(large.params.E - TRUE_LAW.E) < 0.05 * TRUE_LAW.E


def test_intervals_shrink_with_more_points(small_and_large_fits):
    small, large = small_and_large_fits
    for name in PARAM_NAMES:
        small_width = np.subtract(*small.ci(name)[::-1])
        large_width = np.subtract(*large.ci(name)[::-1])
        assert large_width < small_width, (name, small_width, large_width)


def test_bootstrap_is_seeded():
    points = planted_points(4)
    a = fit_law(*points, bootstrap=20, seed=3)
    b = fit_law(*points, bootstrap=20, seed=3)
    np.testing.assert_array_equal(a.bootstrap, b.bootstrap)


def test_too_few_points_refused():
    n, d, loss = planted_points(2)
    with pytest.raises(FitError, match="at least 5"):
        fit_law(n, d, loss)


def test_single_model_size_refused():
    n, d, loss = planted_points(3)
    with pytest.raises(FitError, match="distinct value.*N"):
        fit_law(np.full_like(n, 1e6), d, loss)


def test_fixed_tokens_per_parameter_refused():
    n = np.geomspace(1e5, 1e8, 8)
    d = 20 * n
    with pytest.raises(FitError, match="linear function of log N"):
        fit_law(n, d, TRUE_LAW.loss(n, d))


def test_constant_loss_refused():
    n, d, _ = planted_points(3)
    with pytest.raises(FitError, match="losses are equal"):
        fit_law(n, d, np.full_like(n, 2.0))


def test_loss_that_ignores_n_refused():
    n, d, _ = planted_points(4)
    loss = 1.2 + 300.0 / d**0.3  # no N term at all
    with pytest.raises(FitError, match="degenerate fit"):
        fit_law(n, d, loss, bootstrap=0)


def test_bad_value_names_the_run():
    n, d, loss = planted_points(3)
    loss[4] = math.nan
    with pytest.raises(FitError, match="run 'r4'"):
        fit_law(n, d, loss, labels=[f"r{i}" for i in range(len(n))])


def test_compute_optimal_matches_closed_form_under_6nd():
    law = LawParams(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
    flops = np.array([1e18, 1e21, 5.76e23])
    n_opt, d_opt, loss_opt = compute_optimal(law, flops, FlopsPerToken.six_n())
    g = allocation_exponents(law)
    np.testing.assert_allclose(n_opt, g["G"] * (flops / 6) ** g["a"], rtol=1e-6)
    np.testing.assert_allclose(6 * n_opt * d_opt, flops, rtol=1e-9)
    np.testing.assert_allclose(loss_opt, law.loss(n_opt, d_opt))


def test_flops_per_token_fit():
    n = np.array([1e5, 1e6, 1e7])
    model = FlopsPerToken.fit(n, 6.5 * n + 2e5)
    assert model.kind == "linear"
    assert model.k == pytest.approx(6.5) and model.c == pytest.approx(2e5, rel=1e-6)
    assert FlopsPerToken.fit(np.array([1e5, 1e5]), np.array([7e5, 7e5])).kind == "6N"


def test_overtaking_budget_is_where_a_stays_below_b():
    flops = np.geomspace(1, 1e4, 5)
    c, outcome = overtaking_budget(flops, [3, 2, 1, 0.5, 0.2], [2, 1.5, 1.5, 1, 0.9])
    assert outcome == OVERTAKES and c == pytest.approx(math.sqrt(1e1 * 1e2), rel=0.5)
    assert overtaking_budget(flops, [1] * 5, [2] * 5) == (None, LOWER_THROUGHOUT)
    assert overtaking_budget(flops, [2] * 5, [1] * 5) == (None, NOT_LOWER_AT_TOP)
    # below at small budgets, above later, below again at the top: the last crossing counts
    c, outcome = overtaking_budget(flops, [0, 2, 2, 2, 0], [1, 1, 1, 1, 1])
    assert outcome == OVERTAKES and 1e3 < c < 1e4
    # below at small budgets, above at the top (the H100 MoE case of the old search): no crossover
    assert overtaking_budget(flops, [0, 0, 2, 2, 2], [1] * 5) == (None, NOT_LOWER_AT_TOP)


def test_censored_interval_counts_replicates_that_never_cross():
    budgets = [10.0, 20.0, 30.0, 40.0] + [None] * 6
    outcomes = [OVERTAKES] * 4 + [NOT_LOWER_AT_TOP] * 6
    interval, shares = censored_interval(budgets, outcomes, 0.95)
    assert interval == [10.0, None]  # the upper end lies beyond the searched range
    assert shares[OVERTAKES] == 0.4 and shares[NOT_LOWER_AT_TOP] == 0.6
    interval, _ = censored_interval(
        [None] + [5.0] * 98 + [None],
        [LOWER_THROUGHOUT] + [OVERTAKES] * 98 + [NOT_LOWER_AT_TOP],
        0.9,
    )
    assert interval == [5.0, 5.0]
    assert "beyond range" in crossover_text(
        {"flops": 12.0, "flops_ci": [10.0, None], "searched_flops": [1, 100]}
    )
    assert "no crossover" in crossover_text(
        {"flops": None, "outcome": NOT_LOWER_AT_TOP, "searched_flops": [1, 100]}
    )


def test_crossover_point_lies_inside_its_interval_on_a_planted_pair():
    """Two planted laws whose frontiers cross inside the runs: the estimate and its interval agree."""
    rng = np.random.default_rng(3)
    rows = []
    for arch, law in (
        ("dense", LawParams(E=1.0, A=40.0, B=400.0, alpha=0.35, beta=0.35)),
        ("moe", LawParams(E=0.8, A=60.0, B=400.0, alpha=0.35, beta=0.35)),  # overtakes at 6e14
    ):
        for n in np.geomspace(1e5, 1e7, 4):
            for d in np.geomspace(1e7, 1e9, 4):
                loss = float(law.loss(n, d)) * math.exp(rng.normal(0, 0.005))
                rows.append({"run_id": f"{arch}_{n:.0f}_{d:.0f}", "arch_kind": arch,
                             "tokens_trained": d, "params_non_embedding_active": n,
                             "final_val_bpb": loss, "flops_total": 6 * n * d})  # fmt: skip
    fits = fit_all(pl.DataFrame(rows), bootstrap=30, seed=0)
    crossing = fits["moe"]["crossover_vs_dense"]
    assert crossing["outcome"] == OVERTAKES
    lo, hi = crossing["flops_ci"]
    assert lo is not None and lo <= crossing["flops"] and (hi is None or crossing["flops"] <= hi)
    assert 6.3e14 / 2 < crossing["flops"] < 6.3e14 * 2  # the planted frontiers cross at 6.3e14


# --- aggregate and the CLIs --------------------------------------------------------------------


def summary(run_id: str, arch_kind: str, n: float, tokens: float, loss: float) -> dict:
    flops_per_token = 6 * n + 3e5
    return {
        "run_id": run_id,
        "dataset": "mix",
        "arch": arch_kind,
        "arch_kind": arch_kind,
        "size": f"n{int(n)}",
        "parallelism_name": "single",
        "tokens_target": int(tokens),
        "tokens_trained": int(tokens),
        "steps": 10,
        "params_total": int(3 * n) + 1000,
        "params_active": int(n) + 1000,
        "params_embedding": 1000,
        "params_non_embedding_total": int(3 * n),
        "params_non_embedding_active": int(n),
        "flops_per_token": flops_per_token,
        "flops_total": flops_per_token * tokens,
        "flops_6nd": 6 * n * tokens,
        "final_val_loss": loss * 2.0,
        "final_val_bpb": loss,
        "floor_bpb": 1.2,
        "gap_bpb": loss - 1.2,
        "wall_s": 1.0,
        "tokens_per_s": tokens,
        "mfu": None,
        "device": "cpu",
        "provenance": {"config_hash": "h123", "code_version": "v", "packages": {}, "device": "cpu"},
    }


def write_summaries(folder, moe_sizes: int = 3) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for arch_kind, sizes in (("dense", 3), ("moe", moe_sizes)):
        for n in np.geomspace(1e5, 1e7, 3)[:sizes]:
            for tokens in np.geomspace(1e7, 1e9, 3):
                loss = float(TRUE_LAW.loss(n, tokens) * np.exp(rng.normal(0, 0.005)))
                run_id = f"{arch_kind}_{int(n)}_{int(tokens)}"
                path = folder / run_id / "summary.json"
                path.parent.mkdir(parents=True)
                path.write_text(json.dumps(summary(run_id, arch_kind, n, tokens, loss)))
                paths.append(str(path))
    return paths


def test_aggregate_round_trip(tmp_path):
    paths = write_summaries(tmp_path / "runs")
    out = tmp_path / "scaling" / "runs.parquet"
    assert aggregate.main(["--out", str(out), *paths]) == 0
    table = pl.read_parquet(out)
    assert table.height == len(paths)
    assert "provenance" not in table.columns
    assert set(table["config_hash"]) == {"h123"}
    assert table["mfu"].dtype == pl.Float64 and table["mfu"].null_count() == table.height
    row = table.filter(pl.col("run_id") == "dense_100000_10000000").row(0, named=True)
    original = json.loads(
        (tmp_path / "runs" / "dense_100000_10000000" / "summary.json").read_text()
    )
    for key, value in original.items():
        if key != "provenance":
            assert row[key] == value, key
    assert list(out.parent.iterdir()) == [out]  # no temp file left beside it


def test_aggregate_names_the_bad_file(tmp_path, capsys):
    paths = write_summaries(tmp_path / "runs")
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"run_id": "x", ')
    out = tmp_path / "runs.parquet"
    assert aggregate.main(["--out", str(out), *paths, str(corrupt)]) == 2
    assert str(corrupt) in capsys.readouterr().err
    missing = tmp_path / "absent" / "summary.json"
    assert aggregate.main(["--out", str(out), *paths, str(missing)]) == 2
    assert f"summary not found: {missing}" in capsys.readouterr().err
    incomplete = tmp_path / "incomplete.json"
    incomplete.write_text(json.dumps({"run_id": "y", "arch_kind": "dense"}))
    assert aggregate.main(["--out", str(out), str(incomplete)]) == 2
    assert "final_val_bpb" in capsys.readouterr().err
    assert not out.exists()


def test_fit_cli_records_refusal_and_fits_the_rest(tmp_path, capsys):
    paths = write_summaries(tmp_path / "runs", moe_sizes=1)  # moe: 3 runs, one size -> refused
    runs = tmp_path / "runs.parquet"
    assert aggregate.main(["--out", str(runs), *paths]) == 0
    out = tmp_path / "fits.json"
    args = ["--runs", str(runs), "--out", str(out), "--bootstrap", "20"]
    assert fit.main(args) == 0
    fits = json.loads(out.read_text())
    assert set(fits) == {"dense", "moe"}
    assert "needs at least 5" in fits["moe"]["error"]
    dense = fits["dense"]
    for name in PARAM_NAMES:
        assert math.isfinite(dense[name]) and len(dense[f"{name}_ci"]) == 2
    assert dense["n_points"] == 9 and dense["n_column"] == "params_non_embedding_active"
    assert dense["flops_per_token_model"]["kind"] == "linear"
    assert len(dense["frontier_flops"]) == len(dense["frontier_loss"]) > 10
    assert dense["floor_bpb"] == 1.2 and "floor_in_E_ci" in dense
    assert fit.main([*args, "--strict"]) == 1
    assert fit.main([*args, "--n-column", "params_total", "--loss", "final_val_loss"]) == 0
    fits = json.loads(out.read_text())
    assert fits["dense"]["n_column"] == "params_total"
    assert fits["dense"]["loss_unit"] == "nats/token"
    capsys.readouterr()
    assert fit.main(["--runs", str(tmp_path / "nope.parquet"), "--out", str(out)]) == 2
    assert "nope.parquet" in capsys.readouterr().err


# --- approach 2 ---------------------------------------------------------------------------------


def test_isoflop_recovers_planted_optimum():
    budgets = np.array([1e15, 1e16, 1e17, 1e18])
    n_true, _, _ = compute_optimal(TRUE_LAW, budgets, FlopsPerToken.six_n())
    flops, n = [], []
    for budget, n_star in zip(budgets, n_true, strict=True):
        sizes = n_star * np.geomspace(0.25, 4, 7)
        n.extend(sizes)
        flops.extend(np.full(len(sizes), budget))
    flops, n = np.array(flops), np.array(n)
    loss = TRUE_LAW.loss(n, flops / (6 * n))
    result = isoflop.isoflop_fit(flops, n, loss)
    found = np.array([b["n_opt"] for b in result["budgets"]])
    np.testing.assert_allclose(found, n_true, rtol=0.05)
    expected = allocation_exponents(TRUE_LAW)["a"]
    assert result["n_opt_exponent"] == pytest.approx(expected, abs=0.01)
    assert result["d_opt_exponent"] == pytest.approx(1 - expected, abs=0.01)


def test_isoflop_refuses_without_two_budgets():
    n = np.geomspace(1e5, 1e7, 5)
    flops = np.full(5, 1e15)
    with pytest.raises(FitError, match="approach 2 needs 2"):
        isoflop.isoflop_fit(flops, n, TRUE_LAW.loss(n, flops / (6 * n)))


def test_moe_is_also_fitted_with_total_parameters():
    """N = every expert's parameters: with total = 4 x active the same law reappears with the same
    E and exponents and A scaled by 4^alpha; a dense arch's total fit is its main fit."""
    rows = []
    for arch, ratio in (("dense", 1.0), ("moe", 4.0)):
        for n, d in zip(*planted_points(4, noise=0.002)[:2], strict=True):
            loss = float(TRUE_LAW.loss(n, d))
            rows.append({"run_id": f"{arch}_{n:.0f}_{d:.0f}", "arch_kind": arch,
                         "tokens_trained": d, "params_non_embedding_active": n,
                         "params_non_embedding_total": n * ratio, "final_val_bpb": loss,
                         "flops_total": 6 * n * d})  # fmt: skip
    fits = fit_all(pl.DataFrame(rows), bootstrap=5, seed=0)
    assert fits["dense"]["fit_by_total_params"] == {
        "n_column": "params_non_embedding_total",
        "same_as_main_fit": True,
    }
    total = fits["moe"]["fit_by_total_params"]
    assert total["same_as_main_fit"] is False
    assert total["E"] == pytest.approx(fits["moe"]["E"], rel=1e-3)
    assert total["alpha"] == pytest.approx(fits["moe"]["alpha"], rel=1e-3)
    assert total["A"] == pytest.approx(fits["moe"]["A"] * 4 ** fits["moe"]["alpha"], rel=1e-2)


def test_fixed_floor_fit_recovers_a_planted_law_given_its_E():
    """Four parameters, E given: on a small noisy grid the exponents come back, tighter than free."""
    points = planted_points(5, noise=0.005, seed=2)
    fixed = fit_law(*points, bootstrap=30, seed=0, floor=TRUE_LAW.E)
    free = fit_law(*points, bootstrap=30, seed=0)
    assert pytest.approx(TRUE_LAW.E, rel=1e-12) == fixed.params.E
    np.testing.assert_allclose(fixed.bootstrap[:, 0], TRUE_LAW.E, rtol=1e-12)
    for name in ("A", "B", "alpha", "beta"):
        lo, hi = fixed.ci(name)
        assert lo <= getattr(TRUE_LAW, name) <= hi, (name, lo, hi)
    assert fixed.params.alpha == pytest.approx(TRUE_LAW.alpha, abs=0.03)
    assert fixed.params.beta == pytest.approx(TRUE_LAW.beta, abs=0.03)
    for name in ("alpha", "beta"):
        assert np.ptp(fixed.ci(name)) < np.ptp(free.ci(name)), name
    with pytest.raises(FitError, match="below every loss"):
        fit_law(*points, floor=10.0)


def test_bootstrap_draws_seed_replicates_of_a_point_together():
    """Every point twice (two 'seeds'), grouped by point: both copies always get the same weight,
    and as many points are drawn as there are (the seeds do not count as extra points)."""
    n, d, loss = planted_points(4)
    groups = [f"{a}|{b}" for a, b in zip(n, d, strict=True)] * 2
    index = np.unique(groups, return_inverse=True)[1]
    rng = np.random.default_rng(0)
    for _ in range(20):
        weights = bootstrap_weights(rng, index)
        np.testing.assert_array_equal(weights[: len(n)], weights[len(n) :])
        assert weights.sum() == 2 * len(n)
    twice = fit_law(
        np.tile(n, 2), np.tile(d, 2), np.tile(loss, 2), bootstrap=10, seed=5, groups=groups
    )
    assert twice.n_bootstrap == 10
    with pytest.raises(FitError, match="group labels"):
        fit_law(n, d, loss, groups=["a"])
