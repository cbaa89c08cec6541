"""Chinchilla approach 3: fit L(N, D) = E + A/N^alpha + B/D^beta per architecture.

Serves core question 4 (what do scaling laws feel like in practice, and how do dense and MoE
scale?). The parametric form and the compute-optimal allocation it implies are approach 3 of
Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (Chinchilla). The fitting
details follow the replication of Besiroglu et al. 2024, "Chinchilla Scaling: A replication
attempt": the Huber loss (delta = 1e-3) on residuals of log-loss, the log-sum-exp parametrisation

    log L(N, D) = LSE(a - alpha log N, b - beta log D, e),   A = e^a, B = e^b, E = e^e,

L-BFGS from a grid of initialisations, and confidence intervals from a bootstrap over runs.

N is the run's non-embedding active parameter count by default (`--n-column` picks another), D the
tokens trained, and the loss `final_val_bpb` (bits/byte, comparable across tokenizers) by default.
Compute is the counted FLOPs of the model (`flops_per_token * D`), not 6ND: along the frontier the
counted FLOPs per token are a fitted linear function of N (`k * N + c`, from the runs themselves);
the 6ND frontier is written beside it. For small models the two differ because attention over the
context and the (embedding-sized) output head are a large share of the work, and 6N leaves both out.

CLI: `python -m nanigpt.scaling.fit --runs runs.parquet --out fits.json [--loss final_val_bpb]
[--n-column params_non_embedding_active] [--bootstrap 100] [--seed 0] [--strict]`

fits.json holds one entry per `arch_kind` in the table: a fit, or `{"error": msg}` when the fit is
refused (too few runs, degenerate data). The CLI still exits 0 then, so the headline figure is drawn
with the points and a note that the fit was refused; `--strict` makes any refusal exit 1. Unreadable
input (no table, a missing column) exits 2.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import glob
import math
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy
from scipy.optimize import minimize

from nanigpt.io import write_json_atomic

HUBER_DELTA = 1e-3
MIN_POINTS = 5
MIN_DISTINCT = 2
PARAM_NAMES = ("E", "A", "B", "alpha", "beta")
LOSS_UNITS = {"final_val_bpb": "bits/byte", "final_val_loss": "nats/token"}
N_COLUMNS = (
    "params_non_embedding_active",
    "params_active",
    "params_total",
    "params_non_embedding_total",
    "flops_per_token_non_embedding",
)
# Bounds on theta = (a, b, e, alpha, beta). Exponents are kept non-negative and finite; a fit that
# ends on an exponent bound is refused as degenerate (the loss does not follow a power law there).
EXPONENT_MAX = 4.0
THETA_BOUNDS = [
    (-30.0, 80.0),
    (-30.0, 80.0),
    (-20.0, 10.0),
    (0.0, EXPONENT_MAX),
    (0.0, EXPONENT_MAX),
]
# Initialisation grid (Besiroglu et al. 2024 use a finer one; the objective is evaluated on all of
# it at once and L-BFGS starts only from the best few, which finds the same optimum for far less).
GRID_EXPONENTS = (0.1, 0.25, 0.4, 0.6, 0.9, 1.3)
GRID_LOG_SCALES = tuple(np.arange(0.0, 27.5, 2.5))
GRID_FLOOR_FRACTIONS = (0.05, 0.3, 0.6, 0.85, 0.97)
N_STARTS = 8
# Bootstrap refits start at the full-data optimum, so few iterations are needed; the cap only
# bounds the rare replicate that wanders along a flat valley (it then stops close to its optimum).
BOOTSTRAP_MAXITER = 400
# The frontier's optimum N is searched in 1 .. 1e20 parameters.
_LOG_N_MAX = math.log(1e20)


class FitError(ValueError):
    """A fit refused: too few points, degenerate data, or an optimum that is no power law."""


@dataclass(frozen=True)
class LawParams:
    E: float
    A: float
    B: float
    alpha: float
    beta: float

    @classmethod
    def from_theta(cls, theta: Sequence[float]) -> LawParams:
        a, b, e, alpha, beta = (float(x) for x in theta)
        return cls(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta)

    def loss(self, n: Any, d: Any) -> np.ndarray:
        n = np.asarray(n, dtype=float)
        d = np.asarray(d, dtype=float)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def as_array(self) -> np.ndarray:
        return np.array([self.E, self.A, self.B, self.alpha, self.beta])


@dataclass(frozen=True)
class FlopsPerToken:
    """Training FLOPs per token as a function of N: `k * N + c` (6N when k = 6, c = 0)."""

    k: float
    c: float
    kind: str  # "linear" (fitted on the runs' counted FLOPs) or "6N"
    max_rel_error: float | None = None  # of the linear model on the runs it was fitted to

    def __call__(self, n: Any) -> np.ndarray:
        return self.k * np.asarray(n, dtype=float) + self.c

    @classmethod
    def six_n(cls) -> FlopsPerToken:
        return cls(k=6.0, c=0.0, kind="6N")

    @classmethod
    def fit(cls, n: np.ndarray, flops_per_token: np.ndarray) -> FlopsPerToken:
        """Least squares over the runs; falls back to 6N when N does not vary or the slope is <= 0."""
        n = np.asarray(n, dtype=float)
        fpt = np.asarray(flops_per_token, dtype=float)
        ok = np.isfinite(n) & np.isfinite(fpt) & (fpt > 0)
        if len(np.unique(n[ok])) < 2:
            return cls.six_n()
        k, c = np.polyfit(n[ok], fpt[ok], 1)
        if k <= 0:
            return cls.six_n()
        rel = np.abs(k * n[ok] + c - fpt[ok]) / fpt[ok]
        return cls(k=float(k), c=float(c), kind="linear", max_rel_error=float(rel.max()))


@dataclass
class LawFit:
    """A fitted law with its bootstrap replicates (rows of E, A, B, alpha, beta)."""

    params: LawParams
    theta: np.ndarray
    n_points: int
    objective: float
    bootstrap: np.ndarray = field(default_factory=lambda: np.empty((0, 5)))
    n_bootstrap: int = 0
    ci_level: float = 0.95

    def ci(self, name: str) -> tuple[float, float]:
        """Percentile interval of one parameter over the bootstrap replicates (NaN if none)."""
        if len(self.bootstrap) == 0:
            return (math.nan, math.nan)
        lo, hi = percentile_interval(self.bootstrap[:, PARAM_NAMES.index(name)], self.ci_level)
        return (math.nan if lo is None else lo, math.nan if hi is None else hi)

    def bootstrap_params(self) -> list[LawParams]:
        return [LawParams(*row) for row in self.bootstrap]


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Run scipy's own OpenBLAS on one thread for the duration (best effort, Linux wheels).

    L-BFGS-B calls BLAS on 5-vectors; OpenBLAS's worker threads only add overhead there, which on
    a loaded 2-core machine made each iteration ~50x slower. numpy's and torch's BLAS are untouched.
    """
    libs = []
    pattern = os.path.join(
        os.path.dirname(scipy.__file__), os.pardir, "scipy.libs", "*openblas*.so"
    )
    for path in glob.glob(pattern):
        try:
            lib = ctypes.CDLL(path)
            libs.append((lib, lib.scipy_openblas_get_num_threads()))
            lib.scipy_openblas_set_num_threads(1)
        except (OSError, AttributeError):
            continue
    try:
        yield
    finally:
        for lib, threads in libs:
            lib.scipy_openblas_set_num_threads(threads)


# --- the objective ------------------------------------------------------------------------------


def _objective(
    theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, weights: np.ndarray
) -> tuple[float, np.ndarray]:
    """Weighted Huber loss of log-loss residuals and its gradient, in units of delta^2.

    Dividing by delta^2 does not move the optimum but keeps the objective O(1) per point, so
    L-BFGS's relative stopping rule is not met before the fit has converged.
    """
    a, b, e, alpha, beta = theta
    t1 = a - alpha * log_n
    t2 = b - beta * log_d
    top = np.maximum(np.maximum(t1, t2), e)
    x1, x2, x3 = np.exp(t1 - top), np.exp(t2 - top), np.exp(e - top)
    total = x1 + x2 + x3
    residual = top + np.log(total) - log_l
    clipped = np.clip(residual, -HUBER_DELTA, HUBER_DELTA)  # the Huber loss's derivative
    huber = clipped * (residual - 0.5 * clipped)  # r^2/2 inside delta, delta(|r| - delta/2) out
    g = weights * clipped / total  # times the softmax weights x_i / total below
    gx1, gx2 = g * x1, g * x2
    grad = np.array([gx1.sum(), gx2.sum(), g @ x3, -(gx1 @ log_n), -(gx2 @ log_d)])
    scale = 1.0 / HUBER_DELTA**2
    return float(weights @ huber) * scale, grad * scale


def _grid(log_l_min: float, fixed_e: float | None = None) -> np.ndarray:
    """Initial thetas: the product of the exponent, scale and floor grids, shape (M, 5)."""
    e_values = [log_l_min + math.log(f) for f in GRID_FLOOR_FRACTIONS]
    if fixed_e is not None:
        e_values = [fixed_e]
    mesh = np.meshgrid(GRID_LOG_SCALES, GRID_LOG_SCALES, e_values, GRID_EXPONENTS, GRID_EXPONENTS)
    return np.stack([m.ravel() for m in mesh], axis=1)


def _grid_objective(grid: np.ndarray, log_n, log_d, log_l) -> np.ndarray:
    a, b, e, alpha, beta = (grid[:, i : i + 1] for i in range(5))
    t1 = a - alpha * log_n
    t2 = b - beta * log_d
    pred = np.logaddexp(np.logaddexp(t1, t2), e)
    abs_r = np.abs(pred - log_l)
    huber = np.where(
        abs_r <= HUBER_DELTA, 0.5 * abs_r**2, HUBER_DELTA * (abs_r - 0.5 * HUBER_DELTA)
    )
    return huber.sum(axis=1)


def _bounds(fixed_e: float | None) -> list[tuple[float, float]]:
    """THETA_BOUNDS, with e pinned (lower = upper bound, which L-BFGS-B treats as a fixed variable)
    when the floor is given: the four-parameter fit."""
    if fixed_e is None:
        return THETA_BOUNDS
    return [*THETA_BOUNDS[:2], (fixed_e, fixed_e), *THETA_BOUNDS[3:]]


def _minimise(
    theta0, log_n, log_d, log_l, weights, maxiter=2000, fixed_e=None
) -> tuple[np.ndarray, float]:
    result = minimize(
        _objective,
        theta0,
        args=(log_n, log_d, log_l, weights),
        jac=True,
        method="L-BFGS-B",
        bounds=_bounds(fixed_e),
        options={"maxiter": maxiter, "ftol": 1e-12, "gtol": 1e-8},
    )
    return result.x, float(result.fun)


# --- validation ---------------------------------------------------------------------------------


def _check_points(n: np.ndarray, d: np.ndarray, loss: np.ndarray, labels: Sequence[str]) -> None:
    if not (len(n) == len(d) == len(loss)):
        raise FitError(f"N, D and loss differ in length: {len(n)}, {len(d)}, {len(loss)}")
    for name, values in (("N", n), ("D", d), ("loss", loss)):
        bad = np.flatnonzero(~np.isfinite(values) | (values <= 0))
        if len(bad):
            i = int(bad[0])
            raise FitError(
                f"{name} must be finite and > 0; run {labels[i]!r} has {name} = {values[i]}"
            )
    if len(n) < MIN_POINTS:
        raise FitError(
            f"{len(n)} runs; a 5-parameter law needs at least {MIN_POINTS} (runs: {list(labels)})"
        )
    for name, values in (("N (parameters)", n), ("D (tokens)", d)):
        distinct = len(np.unique(values))
        if distinct < MIN_DISTINCT:
            raise FitError(
                f"degenerate data: {distinct} distinct value(s) of {name} over {len(n)} runs; "
                f"need at least {MIN_DISTINCT} to fit its exponent"
            )
    if np.ptp(np.log(loss)) < 1e-9:
        raise FitError(f"degenerate data: all {len(loss)} losses are equal ({loss[0]})")
    centred = np.stack([np.log(n), np.log(d)], axis=1)
    centred = (centred - centred.mean(axis=0)) / centred.std(axis=0)
    singular = np.linalg.svd(centred, compute_uv=False)
    if singular[-1] < 1e-6 * singular[0]:
        raise FitError(
            "degenerate data: log D is a linear function of log N over these runs "
            "(every run uses the same tokens-per-parameter rule), so the N and D terms "
            "cannot be told apart"
        )


def _check_optimum(theta: np.ndarray, n: np.ndarray, d: np.ndarray, loss: np.ndarray) -> None:
    if not np.all(np.isfinite(theta)):
        raise FitError(f"the fit did not converge to finite values: {theta}")
    params = LawParams.from_theta(theta)
    for name, term in (
        ("A/N^alpha", params.A / n**params.alpha),
        ("B/D^beta", params.B / d**params.beta),
    ):
        if np.max(term / loss) < 1e-4:
            raise FitError(
                f"degenerate fit: the {name} term is below 1e-4 of the loss on every run; "
                "the loss does not depend on that variable over these runs"
            )
    for name, value in (("alpha", theta[3]), ("beta", theta[4])):
        if value < 1e-3 or value > EXPONENT_MAX - 1e-3:
            raise FitError(
                f"degenerate fit: {name} = {value:.3g} lies on its bound [0, {EXPONENT_MAX}]; "
                f"the loss does not follow a power law in {'N' if name == 'alpha' else 'D'} "
                "over these runs"
            )


# --- the fit ------------------------------------------------------------------------------------


def fit_law(
    n: Any,
    d: Any,
    loss: Any,
    *,
    bootstrap: int = 100,
    seed: int = 0,
    ci_level: float = 0.95,
    labels: Sequence[str] | None = None,
    floor: float | None = None,
    groups: Sequence[Any] | None = None,
) -> LawFit:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta; raise FitError rather than return nonsense.

    `floor` fixes E at a known floor (the four-parameter fit; synthetic data knows its entropy
    rate exactly), else E is free (five parameters).

    The bootstrap resamples with replacement the `groups` (one label per run; default: each run its
    own group) and gives every run of a drawn group its weight, so seed replicates of one (size,
    tokens) point are drawn together: the interval then reflects how many distinct points pin the
    law, not how many seeds were run. Each replicate is refitted with L-BFGS warm-started from the
    full-data optimum; replicates that are themselves degenerate (one distinct N, say) are skipped,
    and `n_bootstrap` counts those kept.
    """
    n = np.asarray(n, dtype=float)
    d = np.asarray(d, dtype=float)
    loss = np.asarray(loss, dtype=float)
    labels = list(labels) if labels is not None else [f"#{i}" for i in range(len(n))]
    _check_points(n, d, loss, labels)
    if floor is not None and not (math.isfinite(floor) and 0 < floor < loss.min()):
        raise FitError(f"a fixed floor must be finite, > 0 and below every loss; got {floor}")
    if groups is None:
        group_index = np.arange(len(n))
    else:
        if len(groups) != len(n):
            raise FitError(f"{len(groups)} group labels for {len(n)} runs")
        group_index = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)[1]
    with _single_threaded_blas():
        return _fit_checked(
            n, d, loss, bootstrap=bootstrap, seed=seed, ci_level=ci_level,
            fixed_e=None if floor is None else math.log(floor), group_index=group_index,
        )  # fmt: skip


def bootstrap_weights(rng: np.random.Generator, group_index: np.ndarray) -> np.ndarray:
    """One bootstrap draw: as many groups as there are, with replacement; each run gets the
    number of times its group was drawn (all runs of a group share it)."""
    n_groups = int(group_index.max()) + 1
    drawn = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)
    return drawn[group_index].astype(float)


def _fit_checked(
    n: np.ndarray,
    d: np.ndarray,
    loss: np.ndarray,
    *,
    bootstrap: int,
    seed: int,
    ci_level: float,
    fixed_e: float | None,
    group_index: np.ndarray,
) -> LawFit:
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)
    ones = np.ones_like(log_n)

    grid = _grid(float(log_l.min()), fixed_e)
    starts = grid[np.argsort(_grid_objective(grid, log_n, log_d, log_l))[:N_STARTS]]
    best_theta, best_obj = None, math.inf
    for theta0 in starts:
        theta, obj = _minimise(theta0, log_n, log_d, log_l, ones, fixed_e=fixed_e)
        if obj < best_obj:
            best_theta, best_obj = theta, obj
    _check_optimum(best_theta, n, d, loss)

    rng = np.random.default_rng(seed)
    replicates = []
    for _ in range(bootstrap):
        weights = bootstrap_weights(rng, group_index)
        used = weights > 0
        if len(np.unique(n[used])) < MIN_DISTINCT or len(np.unique(d[used])) < MIN_DISTINCT:
            continue
        theta, _ = _minimise(
            best_theta, log_n, log_d, log_l, weights, maxiter=BOOTSTRAP_MAXITER, fixed_e=fixed_e
        )
        if np.all(np.isfinite(theta)):
            replicates.append(LawParams.from_theta(theta).as_array())
    return LawFit(
        params=LawParams.from_theta(best_theta),
        theta=best_theta,
        n_points=len(n),
        objective=best_obj * HUBER_DELTA**2,
        bootstrap=np.array(replicates).reshape(-1, 5),
        n_bootstrap=len(replicates),
        ci_level=ci_level,
    )


# --- compute-optimal allocation -----------------------------------------------------------------


def compute_optimal(
    params: LawParams, flops: Any, flops_per_token: FlopsPerToken
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N_opt, D_opt and the loss there for each compute budget C = flops_per_token(N) * D.

    With x = log N, the reducible loss g(x) = A e^(-alpha x) + B (f(N) / C)^beta has
    g'(x) = -alpha A e^(-alpha x) + beta B (f(N) / C)^beta k N / f(N), which rises through zero
    once; its root is found by bisection for all budgets at once, with N in (1, 1e20). Budgets
    whose optimum lies outside that range get NaN.
    """
    flops = np.atleast_1d(np.asarray(flops, dtype=float))
    k, c = flops_per_token.k, flops_per_token.c
    lo_x = max(0.0, math.log(-c / k) + 1e-9) if c < 0 else 0.0
    lo = np.full_like(flops, lo_x)
    hi = np.full_like(flops, _LOG_N_MAX)
    log_c = np.log(flops)

    def slope(x: np.ndarray) -> np.ndarray:
        n = np.exp(x)
        f = k * n + c
        d_term = params.B * np.exp(params.beta * (np.log(f) - log_c))
        return (
            -params.alpha * params.A * np.exp(-params.alpha * x) + params.beta * d_term * k * n / f
        )

    inside = (slope(lo) < 0) & (slope(hi) > 0)
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        rising = slope(mid) > 0
        hi = np.where(rising, mid, hi)
        lo = np.where(rising, lo, mid)
    n_opt = np.exp(0.5 * (lo + hi))
    d_opt = flops / flops_per_token(n_opt)
    loss_opt = params.loss(n_opt, d_opt)
    nan = np.full_like(flops, np.nan)
    return (
        np.where(inside, n_opt, nan),
        np.where(inside, d_opt, nan),
        np.where(inside, loss_opt, nan),
    )


def allocation_exponents(params: LawParams) -> dict[str, float]:
    """Under C = 6ND: N_opt = G (C/6)^a, D_opt = (C/6)^b / G (Hoffmann et al. 2022, eq. 4)."""
    if min(params.alpha, params.beta) <= 0:  # a bootstrap replicate on an exponent bound
        return {"a": math.nan, "b": math.nan, "G": math.nan}
    s = params.alpha + params.beta
    return {
        "a": params.beta / s,
        "b": params.alpha / s,
        "G": (params.alpha * params.A / (params.beta * params.B)) ** (1 / s),
    }


# What `overtaking_budget` found on its grid (the grid's ends are the search range).
LOWER_THROUGHOUT = "lower_throughout"  # a is below b at every searched budget
OVERTAKES = "overtakes"  # a is above b at small budgets and below from C* to the top
NOT_LOWER_AT_TOP = "not_lower_at_top"  # a is not below b at the largest searched budget


def overtaking_budget(
    flops: np.ndarray, loss_a: np.ndarray, loss_b: np.ndarray
) -> tuple[float | None, str]:
    """(C*, outcome): the budget from which frontier a stays below frontier b up to the grid's top.

    This is the question "above what compute does a win" asked of the whole searched range: a
    crossing at small budgets that is undone later (a wins, then loses) does not count, which a
    first-sign-change search would report. C* is log-interpolated between the last
    budget where a is not lower and the next; None when a is lower throughout or not lower at top.
    """
    diff = np.asarray(loss_a, dtype=float) - np.asarray(loss_b, dtype=float)
    ok = np.isfinite(diff)
    x, diff = np.log(np.asarray(flops, dtype=float)[ok]), diff[ok]
    if len(diff) == 0 or diff[-1] >= 0:
        return None, NOT_LOWER_AT_TOP
    not_lower = np.flatnonzero(diff >= 0)
    if len(not_lower) == 0:
        return None, LOWER_THROUGHOUT
    i = int(not_lower[-1])
    t = diff[i] / (diff[i] - diff[i + 1])
    return float(math.exp(x[i] + t * (x[i + 1] - x[i]))), OVERTAKES


def censored_interval(
    budgets: list[float | None], outcomes: list[str], level: float
) -> tuple[list[float | None], dict[str, float]]:
    """Percentile interval of C* over bootstrap replicates, counting every replicate.

    A replicate lower throughout sits below the searched range and one not lower at the top sits
    above it; an interval end that falls among those is None (beyond the searched range) instead
    of being computed from the crossing replicates alone, which biased the old interval (and could
    exclude its own point estimate). Also returns the share of each outcome."""
    order = {LOWER_THROUGHOUT: -math.inf, NOT_LOWER_AT_TOP: math.inf}
    values = np.array(
        [
            order.get(o, b if b is not None else math.nan)
            for b, o in zip(budgets, outcomes, strict=True)
        ]
    )
    values = np.sort(values[~np.isnan(values)])
    shares = (
        {
            o: outcomes.count(o) / len(outcomes)
            for o in (LOWER_THROUGHOUT, OVERTAKES, NOT_LOWER_AT_TOP)
        }
        if outcomes
        else {}
    )
    if len(values) == 0:
        return [None, None], shares
    tail = (1 - level) / 2
    lo = values[int(math.floor(tail * (len(values) - 1)))]
    hi = values[int(math.ceil((1 - tail) * (len(values) - 1)))]
    return [float(v) if math.isfinite(v) else None for v in (lo, hi)], shares


def crossover_text(crossing: dict[str, Any], name: str = "MoE") -> str:
    """One line for a figure: where `name` overtakes dense, or why no budget is given."""
    c, outcome = crossing.get("flops"), crossing.get("outcome")
    searched = crossing.get("searched_flops") or [math.nan, math.nan]
    if c is None:
        share = (crossing.get("bootstrap_outcomes") or {}).get(OVERTAKES)
        if share is not None and outcome != LOWER_THROUGHOUT:
            return (
                f"{name} not below dense up to {searched[1]:.1e} FLOPs: no crossover in the "
                f"searched range ({share:.0%} of bootstrap fits overtake)"
            )
        if outcome == LOWER_THROUGHOUT:
            return f"{name} below dense over the whole searched range ({searched[0]:.1e}-{searched[1]:.1e} FLOPs)"
        return f"{name} not below dense up to {searched[1]:.1e} FLOPs: no crossover in the searched range"
    lo, hi = crossing.get("flops_ci") or [None, None]
    ci = f"{lo:.1e}" if lo is not None else "below range"
    ci += f" to {hi:.1e}" if hi is not None else " to beyond range"
    where = " (extrapolated beyond the runs)" if crossing.get("extrapolated") else ""
    share = (crossing.get("bootstrap_outcomes") or {}).get(OVERTAKES)
    share = f"; {share:.0%} of bootstrap fits overtake" if share is not None else ""
    return f"{name} overtakes dense from {c:.2g} FLOPs{where}, 95% CI {ci}{share}"


# --- runs table -> fits.json --------------------------------------------------------------------


def percentile_interval(values, level: float) -> list[float | None]:
    """The central `level` percentile interval of the finite `values` ([None, None] if none):
    every bootstrap interval of the fits, predictions and advice."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return [None, None]
    tail = 100 * (1 - level) / 2
    return [float(x) for x in np.percentile(values, [tail, 100 - tail])]


def _band(rows: list[np.ndarray], level: float) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise percentile band over bootstrap frontiers (NaN where no replicate has a value)."""
    if not rows:
        return np.array([]), np.array([])
    stack = np.array(rows)
    tail = 100 * (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        lo = np.nanpercentile(stack, tail, axis=0)
        hi = np.nanpercentile(stack, 100 - tail, axis=0)
    return lo, hi


def frontier_flops_grid(table: pl.DataFrame, n_points: int = 64) -> np.ndarray:
    flops = table["flops_total"].to_numpy().astype(float)
    flops = flops[np.isfinite(flops) & (flops > 0)]
    return np.geomspace(flops.min() / 2, flops.max() * 2, n_points)


def fit_arch(
    table: pl.DataFrame,
    *,
    loss_column: str = "final_val_bpb",
    n_column: str = "params_non_embedding_active",
    bootstrap: int = 100,
    seed: int = 0,
    ci_level: float = 0.95,
    flops_grid: np.ndarray | None = None,
) -> tuple[dict[str, Any], LawFit, FlopsPerToken]:
    """Fit one architecture's runs; returns the fits.json entry, the fit and its FLOPs model."""
    n = table[n_column].to_numpy().astype(float)
    d = table["tokens_trained"].to_numpy().astype(float)
    loss = table[loss_column].to_numpy().astype(float)
    law = fit_law(
        n, d, loss, bootstrap=bootstrap, seed=seed, ci_level=ci_level, labels=table["run_id"],
        groups=point_groups(n, d),
    )  # fmt: skip
    if "flops_per_token" in table.columns:
        fpt_model = FlopsPerToken.fit(n, table["flops_per_token"].to_numpy().astype(float))
    else:
        fpt_model = FlopsPerToken.six_n()
    flops_grid = frontier_flops_grid(table) if flops_grid is None else flops_grid
    n_opt, d_opt, loss_opt = compute_optimal(law.params, flops_grid, fpt_model)
    n_6nd, d_6nd, loss_6nd = compute_optimal(law.params, flops_grid, FlopsPerToken.six_n())
    band_lo, band_hi = _band(
        [compute_optimal(p, flops_grid, fpt_model)[2] for p in law.bootstrap_params()], ci_level
    )
    predicted = law.params.loss(n, d)
    exponents = allocation_exponents(law.params)
    boot_exponents = [allocation_exponents(p) for p in law.bootstrap_params()]
    entry: dict[str, Any] = {
        "n_points": law.n_points,
        "run_ids": list(table["run_id"]),
        "n_column": n_column,
        "loss_column": loss_column,
        "loss_unit": LOSS_UNITS.get(loss_column, "?"),
        "n_bootstrap": law.n_bootstrap,
        "ci_level": ci_level,
        "seed": seed,
        "huber_delta": HUBER_DELTA,
        "objective": law.objective,
        "rms_log_residual": float(np.sqrt(np.mean((np.log(predicted) - np.log(loss)) ** 2))),
        "n_range": [float(n.min()), float(n.max())],
        "d_range": [float(d.min()), float(d.max())],
        "n_opt_exponent": exponents["a"],
        "n_opt_exponent_ci": percentile_interval(
            np.array([x["a"] for x in boot_exponents]), ci_level
        ),
        "d_opt_exponent": exponents["b"],
        "d_opt_exponent_ci": percentile_interval(
            np.array([x["b"] for x in boot_exponents]), ci_level
        ),
        "flops_per_token_model": {
            "kind": fpt_model.kind,
            "k": fpt_model.k,
            "c": fpt_model.c,
            "max_rel_error": fpt_model.max_rel_error,
        },
        "frontier_flops": flops_grid,
        "frontier_loss": loss_opt,
        "frontier_loss_lo": band_lo,
        "frontier_loss_hi": band_hi,
        "frontier_n_opt": n_opt,
        "frontier_d_opt": d_opt,
        "frontier_tokens_per_param": d_opt / n_opt,
        "frontier_loss_6nd": loss_6nd,
        "frontier_n_opt_6nd": n_6nd,
        "frontier_d_opt_6nd": d_6nd,
        "frontier_tokens_per_param_6nd": d_6nd / n_6nd,
    }
    for name in PARAM_NAMES:
        entry[name] = getattr(law.params, name)
        entry[f"{name}_ci"] = list(law.ci(name))
    # The replicates themselves (rows of E, A, B, alpha, beta): what a prediction or the budget
    # advisor (nanigpt.scaling.predict, nanigpt.scaling.advise) needs for its own intervals.
    entry["bootstrap_params"] = law.bootstrap
    if {"flops_total", "flops_6nd"} <= set(table.columns):
        ratio = table["flops_total"].to_numpy() / table["flops_6nd"].to_numpy()
        entry["flops_counted_over_6nd"] = {
            "min": float(np.min(ratio)),
            "median": float(np.median(ratio)),
            "max": float(np.max(ratio)),
        }
    floor = known_floor(table, loss_column)
    if floor is not None:
        lo, hi = law.ci("E")
        entry["floor_bpb"] = floor
        entry["E_minus_floor"] = law.params.E - floor
        entry["floor_in_E_ci"] = bool(lo <= floor <= hi) if math.isfinite(lo) else None
    fit_kw = {
        "loss_column": loss_column,
        "bootstrap": bootstrap,
        "seed": seed,
        "ci_level": ci_level,
    }
    entry["fixed_floor"] = _side_fit(table, n_column, floor, True, keep_bootstrap=True, **fit_kw)
    if FLOPS_AXIS in table.columns and n_column != FLOPS_AXIS:
        entry["by_flops_per_token"] = {
            "free": _side_fit(table, FLOPS_AXIS, floor, False, **fit_kw),
            "fixed_floor": _side_fit(table, FLOPS_AXIS, floor, True, **fit_kw),
        }
    return entry, law, fpt_model


# DeepSeek LLM's M (Bi et al. 2024, arXiv 2401.02954, eq. 2): non-embedding training FLOPs per
# token, attention over the context included (summary.json's `flops_per_token_non_embedding`).
FLOPS_AXIS = "flops_per_token_non_embedding"


def point_groups(n: np.ndarray, d: np.ndarray) -> list[str]:
    """The bootstrap's groups: one per (N, D) point, holding all its seed replicates."""
    return [f"{a:.6g}|{b:.6g}" for a, b in zip(n, d, strict=True)]


def known_floor(table: pl.DataFrame, loss_column: str) -> float | None:
    """The data's exact floor in bits/byte when the loss is bits/byte and the runs know it."""
    if loss_column != "final_val_bpb" or "floor_bpb" not in table.columns:
        return None
    floor = table["floor_bpb"].drop_nulls().mean()
    return float(floor) if floor is not None and math.isfinite(floor) else None


def law_from_entry(entry: dict[str, Any]) -> LawFit:
    """A fits.json entry (a free fit, or its `fixed_floor`) back as a LawFit with its bootstrap
    replicates (`bootstrap_params`; none in a fits.json written before they were kept)."""
    if "error" in entry:
        raise FitError(f"the fit was refused: {entry['error']}")
    params = LawParams(*(float(entry[p]) for p in PARAM_NAMES))
    rows = np.asarray(entry.get("bootstrap_params") or [], dtype=float).reshape(-1, 5)
    theta = np.array(
        [math.log(params.A), math.log(params.B), math.log(params.E), params.alpha, params.beta]
    )
    return LawFit(
        params=params,
        theta=theta,
        n_points=int(entry.get("n_points", 0)),
        objective=float(entry.get("objective", math.nan)),
        bootstrap=rows,
        n_bootstrap=len(rows),
        ci_level=float(entry.get("ci_level", 0.95)),
    )


def law_summary(law: LawFit) -> dict[str, Any]:
    out: dict[str, Any] = {"n_points": law.n_points, "n_bootstrap": law.n_bootstrap}
    for name in PARAM_NAMES:
        out[name] = getattr(law.params, name)
        out[f"{name}_ci"] = list(law.ci(name))
    return out


def _side_fit(
    table: pl.DataFrame,
    n_column: str,
    floor: float | None,
    fix_e: bool,
    *,
    loss_column: str,
    bootstrap: int,
    seed: int,
    ci_level: float,
    keep_bootstrap: bool = False,
) -> dict[str, Any]:
    """A fit beside the main one: another model-scale axis, or E fixed at the known floor (the
    four-parameter fit; `{"error": ...}` when there is no floor or the fit is refused);
    `keep_bootstrap` keeps its replicates (`bootstrap_params`)."""
    out: dict[str, Any] = {"n_column": n_column, "E_fixed": fix_e}
    if fix_e and floor is None:
        return {**out, "error": "no known floor for this loss (bits/byte on synthetic data only)"}
    n = table[n_column].to_numpy().astype(float)
    d = table["tokens_trained"].to_numpy().astype(float)
    try:
        law = fit_law(
            n, d, table[loss_column].to_numpy().astype(float), bootstrap=bootstrap, seed=seed,
            ci_level=ci_level, labels=table["run_id"], floor=floor if fix_e else None,
            groups=point_groups(n, d),
        )  # fmt: skip
    except FitError as e:
        return {**out, "error": str(e)}
    out = {**out, **law_summary(law), "n_range": [float(n.min()), float(n.max())]}
    if keep_bootstrap:
        out["bootstrap_params"] = law.bootstrap
    return out


# The crossover is searched from the runs' smallest budget to this many times their largest: far
# enough to say where fitted frontiers meet just beyond the data, not so far that the E terms alone
# decide it (the old search ran 1e9 times past the data and below it by 1e3).
CROSSOVER_EXTRAPOLATION = 100.0


def _crossover(
    flops_range: tuple[float, float],
    fit_a: tuple[LawFit, FlopsPerToken],
    fit_b: tuple[LawFit, FlopsPerToken],
    ci_level: float,
) -> dict[str, Any]:
    """Where arch a's compute-optimal frontier overtakes arch b's (`overtaking_budget`), with a
    bootstrap interval that counts replicates that never cross (`censored_interval`)."""
    lo, hi = flops_range
    grid = np.geomspace(lo, hi * CROSSOVER_EXTRAPOLATION, 200)
    (law_a, fpt_a), (law_b, fpt_b) = fit_a, fit_b

    def at(pa: LawParams, pb: LawParams) -> tuple[float | None, str]:
        return overtaking_budget(
            grid, compute_optimal(pa, grid, fpt_a)[2], compute_optimal(pb, grid, fpt_b)[2]
        )

    point, outcome = at(law_a.params, law_b.params)
    pairs = list(zip(law_a.bootstrap_params(), law_b.bootstrap_params(), strict=False))
    replicates = [at(pa, pb) for pa, pb in pairs]
    interval, shares = censored_interval(
        [c for c, _ in replicates], [o for _, o in replicates], ci_level
    )
    return {
        "flops": point,
        "outcome": outcome,
        "extrapolated": bool(point is not None and point > hi),
        "flops_ci": interval,
        "bootstrap_outcomes": shares,
        "searched_flops": [float(grid[0]), float(grid[-1])],
        "runs_flops": [float(lo), float(hi)],
    }


# The total-parameter column that goes with each active one (an MoE counts every expert in it).
TOTAL_OF = {
    "params_non_embedding_active": "params_non_embedding_total",
    "params_active": "params_total",
}


def _fit_by_total_params(
    rows: pl.DataFrame,
    loss_column: str,
    n_column: str,
    bootstrap: int,
    seed: int,
    ci_level: float,
) -> dict[str, Any] | None:
    """The same law with N = total parameters (every expert counted), E, A, B, alpha, beta and
    their intervals; for an arch whose total equals its active count, a pointer to the main fit.
    None when the table has no total column for this N."""
    total = TOTAL_OF.get(n_column)
    if total is None or total not in rows.columns:
        return None
    n_total = rows[total].to_numpy().astype(float)
    if np.allclose(n_total, rows[n_column].to_numpy().astype(float)):
        return {"n_column": total, "same_as_main_fit": True}
    try:
        law = fit_law(
            n_total,
            rows["tokens_trained"].to_numpy().astype(float),
            rows[loss_column].to_numpy().astype(float),
            bootstrap=bootstrap,
            seed=seed,
            ci_level=ci_level,
            labels=rows["run_id"],
        )
    except FitError as e:
        return {"n_column": total, "error": str(e)}
    out: dict[str, Any] = {"n_column": total, "same_as_main_fit": False}
    for name in PARAM_NAMES:
        out[name] = getattr(law.params, name)
        out[f"{name}_ci"] = list(law.ci(name))
    out["n_range"] = [float(n_total.min()), float(n_total.max())]
    return out


def fit_all(
    table: pl.DataFrame,
    *,
    loss_column: str = "final_val_bpb",
    n_column: str = "params_non_embedding_active",
    bootstrap: int = 100,
    seed: int = 0,
    ci_level: float = 0.95,
) -> dict[str, Any]:
    """`{arch_kind: fit entry or {"error": msg}}` over every arch_kind in the table.

    Every fit shares one frontier FLOPs grid so frontiers can be compared point by point. Each
    non-dense fit gets `crossover_vs_dense` when the dense fit succeeded too.
    """
    needed = {"run_id", "arch_kind", "tokens_trained", n_column, loss_column, "flops_total"}
    missing = sorted(needed - set(table.columns))
    if missing:
        raise KeyError(f"runs table lacks column(s) {missing}; has {table.columns}")
    if table.height == 0:
        raise ValueError("runs table is empty")
    grid = frontier_flops_grid(table)
    flops = table["flops_total"].to_numpy().astype(float)
    flops = flops[np.isfinite(flops) & (flops > 0)]
    flops_range = (float(flops.min()), float(flops.max()))
    out: dict[str, Any] = {}
    laws: dict[str, tuple[LawFit, FlopsPerToken]] = {}
    for arch_kind in sorted(table["arch_kind"].unique().to_list()):
        rows = table.filter(pl.col("arch_kind") == arch_kind).sort("run_id")
        try:
            entry, law, fpt = fit_arch(
                rows,
                loss_column=loss_column,
                n_column=n_column,
                bootstrap=bootstrap,
                seed=seed,
                ci_level=ci_level,
                flops_grid=grid,
            )
        except FitError as e:
            out[arch_kind] = {"error": str(e), "n_points": rows.height}
            continue
        entry["fit_by_total_params"] = _fit_by_total_params(
            rows, loss_column, n_column, bootstrap, seed, ci_level
        )
        out[arch_kind] = entry
        laws[arch_kind] = (law, fpt)
    if "dense" in laws:
        for arch_kind, pair in laws.items():
            if arch_kind != "dense":
                out[arch_kind]["crossover_vs_dense"] = _crossover(
                    flops_range, pair, laws["dense"], ci_level
                )
    return out


def jsonable(obj: Any) -> Any:
    """NaN/inf become null (JSON has neither); numpy values become Python ones."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [jsonable(v) for v in (obj.tolist() if isinstance(obj, np.ndarray) else obj)]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.scaling.fit",
        description="Fit L(N, D) = E + A/N^alpha + B/D^beta per arch_kind (Chinchilla approach 3).",
    )
    parser.add_argument("--runs", required=True, help="runs.parquet from nanigpt.scaling.aggregate")
    parser.add_argument("--out", required=True, help="fits.json to write")
    parser.add_argument("--loss", default="final_val_bpb", choices=sorted(LOSS_UNITS))
    parser.add_argument("--n-column", default="params_non_embedding_active", choices=N_COLUMNS)
    parser.add_argument("--bootstrap", type=int, default=100, help="bootstrap replicates over runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ci", type=float, default=0.95, help="confidence level of intervals")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any fit is refused")
    args = parser.parse_args(argv)
    if not Path(args.runs).is_file():
        print(f"error: runs table not found: {args.runs}", file=sys.stderr)
        return 2
    try:
        table = pl.read_parquet(args.runs)
        fits = fit_all(
            table,
            loss_column=args.loss,
            n_column=args.n_column,
            bootstrap=args.bootstrap,
            seed=args.seed,
            ci_level=args.ci,
        )
    except (KeyError, ValueError, pl.exceptions.PolarsError, OSError) as e:
        print(f"error: {args.runs}: {e}", file=sys.stderr)
        return 2
    write_json_atomic(args.out, jsonable(fits))
    refused = 0
    for arch_kind, entry in fits.items():
        if "error" in entry:
            refused += 1
            print(f"{arch_kind}: fit refused: {entry['error']}", file=sys.stderr)
        else:
            print(
                f"{arch_kind}: E={entry['E']:.4g} A={entry['A']:.4g} B={entry['B']:.4g} "
                f"alpha={entry['alpha']:.3f} {entry['alpha_ci']} beta={entry['beta']:.3f} "
                f"{entry['beta_ci']} ({entry['n_points']} runs, {entry['n_bootstrap']} bootstrap)"
            )
    print(f"wrote {args.out}")
    return 1 if (args.strict and refused) else 0


if __name__ == "__main__":
    sys.exit(main())
