"""The budget advisor (nanigpt.scaling.advise) against a planted law and planted throughput."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from nanigpt.scaling.advise import AdviceError, advise, main, report
from nanigpt.scaling.fit import LawParams, fit_all, jsonable

# A planted law in the range of the project's GPU fits (Hoffmann et al. 2022's form).
LAW = LawParams(E=0.7, A=30.0, B=900.0, alpha=0.34, beta=0.42)


def planted_runs(tokens_per_s=None, noise: float = 0.0) -> pl.DataFrame:
    """5 sizes x 4 budgets on the planted law, F(N) = 6N exactly (so eq. 4 holds as written)."""
    rng = np.random.default_rng(0)
    rows = []
    for n in np.geomspace(1e5, 1e7, 5):
        for d in np.geomspace(1e7, 1e9, 4):
            loss = float(LAW.loss(n, d)) * math.exp(noise * rng.standard_normal())
            rows.append(
                {
                    "run_id": f"dense_{n:.0f}_{d:.0f}",
                    "arch_kind": "dense",
                    "tokens_trained": d,
                    "params_non_embedding_active": n,
                    "final_val_bpb": loss,
                    "flops_per_token": 6 * n,
                    "flops_total": 6 * n * d,
                    "device": "planted device",
                    "tokens_per_s": (tokens_per_s or (lambda n: 1e12 / (6 * n)))(n),
                }
            )
    return pl.DataFrame(rows)


def chinchilla_eq4(flops: float, law: LawParams) -> tuple[float, float]:
    """Hoffmann et al. 2022, eq. 4: N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b."""
    s = law.alpha + law.beta
    g = (law.alpha * law.A / (law.beta * law.B)) ** (1 / s)
    return g * (flops / 6) ** (law.beta / s), (flops / 6) ** (law.alpha / s) / g


@pytest.fixture(scope="module")
def fits():
    return jsonable(fit_all(planted_runs(), bootstrap=20, seed=0))


@pytest.mark.parametrize("flops", [1e15, 1e17, 1e19])
def test_flop_optimal_matches_chinchilla_eq4(fits, flops):
    """Noise-free points: N and D within 0.1% of the closed form (the fit recovers the law to
    ~1e-11 here; the tolerance is for other CPUs' arithmetic), 1e19 being 100x past the largest
    run; the loss there is the law's."""
    advice = advise(fits, [flops], arch="dense", law="free")
    best = advice["budgets"][0]["flop_optimal"]
    n_true, d_true = chinchilla_eq4(flops, LAW)
    assert best["n"] == pytest.approx(n_true, rel=1e-3)
    assert best["d"] == pytest.approx(d_true, rel=1e-3)
    assert best["loss"] == pytest.approx(float(LAW.loss(n_true, d_true)), rel=1e-4)
    assert best["n_ci"][0] <= best["n"] <= best["n_ci"][1]


def test_flop_optimal_with_tiny_noise_stays_within_5pct_of_eq4():
    """0.2% noise in log-loss (about the GPU runs' seed noise): N and D within 5% of the closed
    form from 1e15 to 1e19 FLOPs (measured: at most 2.6%, at 1e19)."""
    noisy = jsonable(fit_all(planted_runs(noise=0.002), bootstrap=0, seed=0))
    for flops in (1e15, 1e17, 1e19):
        best = advise(noisy, [flops], arch="dense", law="free")["budgets"][0]["flop_optimal"]
        n_true, d_true = chinchilla_eq4(flops, LAW)
        assert best["n"] == pytest.approx(n_true, rel=0.05)
        assert best["d"] == pytest.approx(d_true, rel=0.05)


def test_constant_mfu_puts_the_wall_clock_optimum_on_the_flop_optimum(fits):
    """With every size at the same FLOP/s, time is compute: the two optima coincide."""
    advice = advise(fits, [1e17], arch="dense", law="free", runs=planted_runs())
    b = advice["budgets"][0]
    assert b["wall_optimal"]["n"] == pytest.approx(b["flop_optimal"]["n"], rel=0.01)
    assert b["wall_optimal"]["loss"] == pytest.approx(b["flop_optimal"]["loss"], rel=1e-4)
    assert b["flop_optimal"]["wall_s"] == pytest.approx(1e17 / 1e12, rel=1e-6)


def test_slow_small_models_push_the_wall_clock_optimum_to_larger_n(fits):
    """Tokens/s flat over the measured sizes (launch-bound, as small models on a GPU): in the
    FLOP-optimal choice's time a larger model does better, at more FLOPs."""
    runs = planted_runs(tokens_per_s=lambda n: 1e5)
    advice = advise(fits, [1e15], arch="dense", law="free", runs=runs)
    b = advice["budgets"][0]
    assert b["wall_optimal"]["n"] > 1.5 * b["flop_optimal"]["n"]
    assert b["wall_optimal"]["loss"] < b["flop_optimal"]["loss"]
    assert b["wall_optimal"]["flops"] > 1e15
    assert "wall-clock-optimal" in report(advice)
    assert {r["frontier"] for r in advice["frontiers"]} == {"FLOP-optimal", "wall-clock-optimal"}


def test_bad_questions_are_refused(fits, tmp_path, capsys):
    with pytest.raises(AdviceError, match="no arch_kind 'moe'"):
        advise(fits, [1e17], arch="moe")
    with pytest.raises(AdviceError, match="no dense run measured on a device matching"):
        advise(fits, [1e17], runs=planted_runs(), device="H100")
    path = tmp_path / "fits.json"
    path.write_text("{}")
    assert main(["--flops", "1e17", "--fits", str(path), "--no-runs"]) == 2
    assert capsys.readouterr().err.startswith("error: fits.json has no arch_kind")
