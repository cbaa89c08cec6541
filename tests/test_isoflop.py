"""IsoFLOP sweeps end to end on small inputs: budgets in the config become token counts, the fit
groups runs by declared budget, and the two figures (profiles, loss curves) build or refuse clearly.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import polars as pl
import pytest

from nanigpt.graph.config import (
    ISOFLOP_MIN_SIZES,
    ConfigError,
    load_config,
    resolve_runs,
    run_settings_json,
    sweep_run_ids,
    validate_config,
)
from nanigpt.model.flops import count
from nanigpt.plots import isoflop as isoflop_plot
from nanigpt.plots import loss_curves
from nanigpt.scaling import isoflop
from nanigpt.scaling.fit import FlopsPerToken, LawParams, allocation_exponents, compute_optimal
from nanigpt.training.config import tokens_per_step
from tests.workflow_util import load_smoke

BUDGETS = [1.0e8, 2.0e8, 4.0e8]


def budget_sweep(raw: dict, budgets=BUDGETS, sizes=("a", "b", "c")) -> dict:
    raw = copy.deepcopy(raw)
    raw["sweeps"]["iso"] = {
        "dataset": "tiny",
        "archs": ["dense", "moe"],
        "sizes": list(sizes),
        "budgets": list(budgets),
    }
    raw["isoflop"] = {"sweeps": ["iso"]}
    return raw


# --- config: budgets -> tokens ------------------------------------------------------------------


def test_budget_tokens_are_the_trainers_flops_per_token_rounded_to_batches():
    config = validate_config(budget_sweep(load_smoke()))
    batch = tokens_per_step(config["training"])
    assert batch == 16 * 4  # seq_len x batch_size of the smoke config
    runs = resolve_runs(config)
    iso = [runs[rid] for rid in sweep_run_ids(config, "iso")]
    assert len(iso) == 2 * 3 * len(BUDGETS)
    for run in iso:
        budget = run["budgets"]["iso"]
        fpt = count(run["model"], seq_len=run["training"]["seq_len"]).train_flops_per_token
        assert run["tokens"] % batch == 0
        assert run["tokens"] == math.floor(budget / fpt / batch + 0.5) * batch
        assert abs(run["tokens"] * fpt - budget) <= 0.5 * batch * fpt
        assert run["run_id"] == (
            f"tiny_{run['arch']}_{run['size']}_t{run['tokens']}_{run['parallelism_name']}"
        )
        # the budget is bookkeeping, like `sweeps`: not a setting the trainer sees
        assert "budgets" not in json.loads(run_settings_json(run))
    # every (arch, size, budget) is its own run: labels stay unique
    assert len({(r["arch"], r["size"], r["budgets"]["iso"]) for r in iso}) == len(iso)


def test_budgets_written_as_yaml_strings_are_read_as_numbers():
    raw = budget_sweep(load_smoke(), budgets=["1e8", "2.0e8", 4.0e8])
    config = validate_config(raw)
    assert config["sweeps"]["iso"]["budgets"] == BUDGETS


def test_default_config_declares_an_isoflop_sweep():
    config = load_config()
    names = config["isoflop"]["sweeps"]
    assert names
    for name in names:
        sweep = config["sweeps"][name]
        assert "budgets" in sweep and len(sweep["sizes"]) >= ISOFLOP_MIN_SIZES
        assert len(sweep_run_ids(config, name)) == len(sweep["sizes"]) * len(sweep["budgets"])


def test_min_sizes_agree_with_the_fit():
    assert ISOFLOP_MIN_SIZES == isoflop.MIN_SIZES_PER_BUDGET


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda s: s.update(tokens=[1024]),
            r"sweeps\.iso: give exactly one of 'tokens' .* got 'tokens' and 'budgets'",
        ),
        (
            lambda s: s.pop("budgets"),
            r"sweeps\.iso: give exactly one of 'tokens' .* got neither",
        ),
        (
            lambda s: s.update(budgets=[1000.0, 4.0e8]),
            r"sweeps\.iso: budget 1000 FLOPs buys size 'a' \(arch 'dense', \d+ training "
            r"FLOPs/token\) only 0 tokens, under one batch of 64",
        ),
        (
            lambda s: s.update(budgets=[2.0e8, 2.001e8]),
            r"sweeps\.iso: budget 2\.001e\+08 FLOPs rounds size '.' \(arch '\w+'\) to \d+ tokens"
            r".*nearer budget 2e\+08",
        ),
        (lambda s: s.update(budgets=[-1.0]), r"sweeps\.iso\.budgets\.0"),
    ],
    ids=["both", "neither", "under-one-batch", "budgets-too-close", "negative"],
)
def test_bad_budget_sweeps_are_refused_naming_the_sweep(edit, message):
    raw = budget_sweep(load_smoke())
    edit(raw["sweeps"]["iso"])
    with pytest.raises(ConfigError, match=message):
        validate_config(raw)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["isoflop"].update(sweeps=["nope"]), r"isoflop\.sweeps: unknown sweep 'nope'"),
        (
            lambda r: r["isoflop"].update(sweeps=["scaling"]),
            r"isoflop\.sweeps: sweep 'scaling' lists 'tokens'",
        ),
        (
            lambda r: r["sweeps"]["iso"].update(sizes=["a", "b"]),
            r"isoflop\.sweeps: sweep 'iso' has 2 size\(s\) and 3 budget\(s\)",
        ),
        (lambda r: r["isoflop"].update(loss="val"), r"isoflop\.loss"),
    ],
    ids=["unknown", "tokens-sweep", "two-sizes", "bad-loss"],
)
def test_bad_isoflop_block_is_refused(edit, message):
    raw = budget_sweep(load_smoke())
    edit(raw)
    with pytest.raises(ConfigError, match=message):
        validate_config(raw)


# --- the fit, grouped by declared budget ---------------------------------------------------------

LAW = LawParams(E=1.2, A=40.0, B=300.0, alpha=0.35, beta=0.3)
PLANTED_BUDGETS = [1e15, 1e16, 1e17]
# A budget whose parabola's minimum lies outside the sizes tried: kept, drawn dashed, explained.
OUT_OF_RANGE_BUDGET = {
    "flops": 1e18,
    "n_runs": 3,
    "n": [1.0, 2.0, 4.0],
    "loss": [3.0, 2.0, 1.5],
    "coefficients": [0.1, -1.0, 3.0],
    "reason": "minimum at N = 1.5e+02 lies outside the sizes tried [1, 4]",
}


def planted_runs(rounding: float = 0.15) -> pl.DataFrame:
    """Runs at the planted law's IsoFLOP points, each budget missed by up to `rounding` (as whole
    batches would), in the columns nanigpt.scaling.aggregate writes."""
    n_true, _, _ = compute_optimal(LAW, np.array(PLANTED_BUDGETS), FlopsPerToken.six_n())
    rows = []
    rng = np.random.default_rng(0)
    for budget, n_star in zip(PLANTED_BUDGETS, n_true, strict=True):
        for i, n in enumerate(n_star * np.geomspace(0.25, 4, 5)):
            flops = budget * (1 + rng.uniform(-rounding, rounding))
            tokens = flops / (6 * n)
            rows.append(
                {
                    "run_id": f"run_{budget:.0e}_{i}",
                    "arch_kind": "dense",
                    "params_non_embedding_active": n,
                    "flops_per_token": 6 * n,
                    "flops_total": flops,
                    "tokens_trained": tokens,
                    "final_val_bpb": float(LAW.loss(n, tokens)),
                }
            )
    return pl.DataFrame(rows)


def test_declared_budgets_group_runs_that_a_tolerance_would_split(tmp_path):
    table = planted_runs(rounding=0.15)
    by_tolerance = isoflop.isoflop_all(table, rel_tol=0.1)["dense"]
    by_budget = isoflop.isoflop_all(table, budgets=PLANTED_BUDGETS)["dense"]
    assert len(by_tolerance.get("budgets", [])) + len(by_tolerance["skipped_budgets"]) > 3
    assert [b["flops"] for b in by_budget["budgets"]] == PLANTED_BUDGETS
    assert by_budget["declared_budgets"] == PLANTED_BUDGETS
    expected = allocation_exponents(LAW)["a"]  # beta / (alpha + beta)
    assert by_budget["n_opt_exponent"] == pytest.approx(expected, abs=0.05)
    for budget in by_budget["budgets"]:
        assert len(budget["n"]) == len(budget["loss"]) == len(budget["run_ids"]) == 5
        p2, p1, p0 = budget["coefficients"]
        x_opt = -p1 / (2 * p2)
        assert math.exp(x_opt) == pytest.approx(budget["n_opt"])


def test_isoflop_cli_with_budgets_and_its_bad_inputs(tmp_path, capsys):
    runs = tmp_path / "runs.parquet"
    planted_runs(rounding=0.01).write_parquet(runs)
    out = tmp_path / "isoflop.json"
    args = ["--runs", str(runs), "--out", str(out), "--budgets", *map(str, PLANTED_BUDGETS)]
    assert isoflop.main(args) == 0
    result = json.loads(out.read_text())["dense"]
    assert len(result["budgets"]) == 3 and "n_opt_exponent" in result
    assert isoflop.main([*args[:4], "--budgets", "0", "1e16"]) == 2
    assert "--budgets must be positive" in capsys.readouterr().err
    assert isoflop.main([*args[:4], "--loss", "final_val_loss"]) == 2
    assert "no column 'final_val_loss'" in capsys.readouterr().err


def test_refused_fit_keeps_its_profiles():
    table = planted_runs(rounding=0.01).filter(pl.col("flops_total") < 2e15)
    entry = isoflop.isoflop_all(table, budgets=PLANTED_BUDGETS)["dense"]
    assert "approach 2 needs 2" in entry["error"]
    assert len(entry["budgets"]) == 1 and len(entry["budgets"][0]["n"]) == 5


# --- the figures -------------------------------------------------------------------------------


def test_isoflop_figure_shows_profiles_minima_and_exponents(tmp_path):
    fits = tmp_path / "isoflop.json"
    table = planted_runs(rounding=0.01)
    # a budget whose minimum lies outside the sizes: kept, dashed, and explained
    result = isoflop.isoflop_all(table, budgets=[*PLANTED_BUDGETS])
    out_of_range = dict(OUT_OF_RANGE_BUDGET)
    result["dense"]["skipped_budgets"].append(out_of_range)
    fits.write_text(json.dumps(result))
    out = tmp_path / "isoflop.svg"
    assert isoflop_plot.main(["--isoflop", str(fits), "--out", str(out), "--title", "T"]) == 0
    svg = out.read_text()
    assert svg.lstrip().startswith("<svg")
    assert "N_opt ∝ C^" in svg and "D_opt ∝ C^" in svg
    assert "1e+18 FLOPs: no minimum" in svg
    for budget in PLANTED_BUDGETS:
        assert isoflop_plot.budget_label(budget) in svg


def test_isoflop_figure_of_a_refused_fit_and_bad_input(tmp_path, capsys):
    table = planted_runs(rounding=0.01).filter(pl.col("flops_total") < 2e15)
    fits = tmp_path / "isoflop.json"
    fits.write_text(json.dumps(isoflop.isoflop_all(table, budgets=PLANTED_BUDGETS)))
    out = tmp_path / "refused.svg"
    assert isoflop_plot.main(["--isoflop", str(fits), "--out", str(out)]) == 0
    assert "fit refused" in out.read_text()
    assert isoflop_plot.main(["--isoflop", str(tmp_path / "nope.json"), "--out", str(out)]) == 2
    assert "nope.json" in capsys.readouterr().err
    fits.write_text(json.dumps({"dense": {"n_points": 3}}))
    assert isoflop_plot.main(["--isoflop", str(fits), "--out", str(out)]) == 2
    assert "neither budgets nor error" in capsys.readouterr().err


def fake_run(root, run_id: str, arch: str, size: str, params: int, steps: int, floor=0.5):
    """A run folder as nanigpt.train leaves it (only what the loss-curve figure reads)."""
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    step = np.arange(steps)
    tokens = (step + 1) * 64
    loss = 1.0 + 4.0 / np.sqrt(step + 1) + 1000 / params
    val = np.where((step + 1) % 10 == 0, loss + 0.05, np.nan)
    pl.DataFrame(
        {
            "step": step,
            "tokens": tokens,
            "flops": tokens * 6.0 * params,
            "loss": loss,
            "val_loss": val,
            "val_bpb": val / (2 * math.log(2)),
        }
    ).with_columns(pl.col("val_loss", "val_bpb").fill_nan(None)).write_parquet(
        run_dir / "metrics.parquet"
    )
    summary = {
        "run_id": run_id,
        "arch": arch,
        "size": size,
        "params_non_embedding_active": params,
        "floor_bpb": floor,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def test_loss_curves_one_panel_per_arch_one_line_per_run(tmp_path):
    runs = [
        fake_run(tmp_path, f"{arch}_{size}_{steps}", arch, size, params, steps)
        for arch in ("dense", "moe")
        for size, params in (("s1", 1000), ("s2", 8000))
        for steps in (40, 80)
    ]
    out = tmp_path / "curves.svg"
    assert loss_curves.main(["--out", str(out), "--title", "Curves", *map(str, runs)]) == 0
    svg = out.read_text()
    assert "arch dense" in svg and "arch moe" in svg
    assert "entropy floor" in svg
    tokens_out = tmp_path / "tokens.svg"
    assert loss_curves.main(["--out", str(tokens_out), "--x", "tokens", str(runs[0])]) == 0
    assert "tokens seen" in tokens_out.read_text()
    train, val = loss_curves.run_rows(*loss_curves.load_run(runs[0]), "flops")
    assert len(val) == 4 and all(r["run"] == runs[0].name for r in train + val)
    assert len(train) <= loss_curves.MAX_POINTS_PER_RUN + 1


def test_loss_curves_bad_input_names_the_file(tmp_path, capsys):
    run = fake_run(tmp_path, "r", "dense", "s1", 1000, 20)
    out = tmp_path / "x.svg"
    (run / "metrics.parquet").unlink()
    assert loss_curves.main(["--out", str(out), str(run)]) == 2
    assert f"metrics not found: {run / 'metrics.parquet'}" in capsys.readouterr().err
    pl.DataFrame({"step": [0], "loss": [1.0]}).write_parquet(run / "metrics.parquet")
    assert loss_curves.main(["--out", str(out), str(run)]) == 2
    assert "lacks column(s)" in capsys.readouterr().err
    assert loss_curves.main(["--out", str(out), str(tmp_path / "none")]) == 2
    assert "run summary not found" in capsys.readouterr().err
    assert not out.exists()
