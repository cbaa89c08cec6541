"""The design simulator: a grid's predicted intervals shrink with less noise and more seeds."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest

from nanigpt.scaling import design
from nanigpt.scaling.fit import LawParams

LAW = LawParams(
    E=0.614, A=26.0, B=37750.0, alpha=0.485, beta=0.991
)  # the CPU headline's E = floor fit
SIZES = [1048, 2340, 4144, 9288, 41652]
TOKENS = [49152, 98304, 196608, 393216]


def test_quiet_runs_determine_the_law_and_noisy_ones_do_not():
    quiet = design.evaluate_design(LAW, SIZES, TOKENS, seeds=1, sigma=0.002, trials=2, bootstrap=20)
    noisy = design.evaluate_design(LAW, SIZES, TOKENS, seeds=1, sigma=0.08, trials=2, bootstrap=20)
    assert quiet["E_width"] < 0.1 and quiet["E_error"] < 0.02 and quiet["meets_bar"] >= 0.5
    assert noisy["E_width"] > 3 * quiet["E_width"]
    assert noisy["alpha_width_over_estimate"] > quiet["alpha_width_over_estimate"]


def test_seed_noise_is_the_spread_of_replicates_in_log_loss():
    rows = []
    for tokens, (a, b) in {100: (1.0, 1.1), 200: (0.8, 0.8)}.items():
        for seed, loss in enumerate((a, b)):
            rows.append(
                {"arch_kind": "dense", "params_non_embedding_active": 10, "tokens_trained": tokens,
                 "seed": seed, "final_val_bpb": loss}
            )  # fmt: skip
    rows.append(dict(rows[0], tokens_trained=300))  # one seed: not a replicate
    noise = design.seed_noise(pl.DataFrame(rows))
    sd = abs(math.log(1.1) - math.log(1.0)) / math.sqrt(2)
    assert noise["points"] == 2
    assert noise["by_tokens"] == pytest.approx({100: sd, 200: 0.0})
    assert noise["sigma"] == pytest.approx(sd / math.sqrt(2))


def test_cli_writes_designs_and_names_a_missing_fit(tmp_path, capsys):
    fits = {
        "dense": {"fixed_floor": {p: getattr(LAW, p) for p in ("E", "A", "B", "alpha", "beta")}}
    }
    (tmp_path / "fits.json").write_text(json.dumps(fits))
    argv = ["--fits", str(tmp_path / "fits.json"), "--sizes", *map(str, SIZES), "--tokens",
            *map(str, TOKENS), "--sigma", "0.01", "--trials", "1", "--bootstrap", "10"]  # fmt: skip
    assert design.main([*argv, "--out", str(tmp_path / "d.json")]) == 0
    out = json.loads((tmp_path / "d.json").read_text())
    assert out["law"]["E"] == pytest.approx(0.614) and len(out["designs"]) == 1
    assert design.main([*argv, "--arch", "moe", "--out", str(tmp_path / "e.json")]) == 2
    assert "no fit for arch 'moe'" in capsys.readouterr().err
