"""Design a scaling sweep from the fit's own uncertainty: the intervals a grid of runs would give.

Serves core question 4 (issue 16, "design from the fit's own uncertainty"): before paying for a
sweep, ask whether its grid of sizes, token budgets and seeds can determine the free five-parameter
law L(N, D) = E + A/N^alpha + B/D^beta at the noise the runs really have. The method is a
parametric bootstrap (Efron & Tibshirani 1993, ch. 6) of the fit in `nanigpt.scaling.fit`
(Chinchilla approach 3, Hoffmann et al. 2022, fitted as in Besiroglu et al. 2024):

1. take a law that describes the runs: by default a fit's `fixed_floor` entry in fits.json (E at
   the data's exact floor), so the planted E is the true one;
2. for each trial, draw one loss per (N, D, seed) as L(N, D) * exp(sigma * z), z standard normal,
   where sigma is the relative spread of seed replicates (`seed_noise` measures it from runs);
3. fit the free law to the trial with the headline's bootstrap (seed replicates of one (N, D)
   point resampled together) and record each parameter's 95% interval;
4. report per design the median interval widths over the trials, how often E's interval holds the
   planted E, and whether the median trial meets issue 16's bar (alpha's and beta's interval each
   narrower than its estimate; E's interval holding the floor and at most 0.3 wide).

What it cannot see: a misfit of the law itself (runs limited by optimisation, not by N or D, as at
the CPU headline's smallest budget) adds to the real fit's intervals and is not simulated.

CLI:
    python -m nanigpt.scaling.design --fits results/scaling/fits.json --arch dense \
        --sizes 1048 2340 4144 9288 41652 --tokens 49152 98304 196608 393216 \
        --seeds 1 2 --sigma 0.01 0.03 [--noise-from results/scaling/runs.parquet] \
        [--trials 8] [--bootstrap 60] --out results/scaling/design.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from nanigpt.io import write_json_atomic
from nanigpt.scaling.fit import PARAM_NAMES, FitError, LawParams, fit_law, point_groups

log = logging.getLogger("nanigpt.scaling.design")

E_WIDTH_MAX = 0.3  # issue 16's bar on the free fit's E interval (bits/byte)


def seed_noise(table: pl.DataFrame, loss: str = "final_val_bpb") -> dict[str, Any]:
    """Relative seed spread of the runs: per (arch, N, D) point with 2+ seeds, the sample standard
    deviation of log-loss; returns its root mean square over the points (the sigma a trial draws
    with) and the per-budget values."""
    keys = ["arch_kind", "params_non_embedding_active", "tokens_trained"]
    points = (
        table.with_columns(pl.col(loss).log().alias("_log_loss"))
        .group_by(keys)
        .agg(pl.col("_log_loss").std(ddof=1).alias("sd"), pl.len().alias("seeds"))
        .filter(pl.col("seeds") >= 2)
    )
    if points.height == 0:
        raise ValueError("no (arch, size, tokens) point has 2 or more seeds to measure noise from")
    by_tokens = points.group_by("tokens_trained").agg((pl.col("sd") ** 2).mean().sqrt())
    return {
        "sigma": float(math.sqrt((points["sd"] ** 2).mean())),
        "points": points.height,
        "by_tokens": {int(t): float(s) for t, s in by_tokens.sort("tokens_trained").iter_rows()},
    }


def simulate(
    law: LawParams,
    sizes: Sequence[float],
    tokens: Sequence[float],
    seeds: int,
    sigma: float,
    trial: int,
    bootstrap: int,
) -> dict[str, float] | None:
    """One simulated sweep fitted freely: each parameter's estimate and 95% interval (None when the
    fit is refused, as the headline's would be)."""
    rng = np.random.default_rng(trial)
    grid = [(n, d) for n in sizes for d in tokens for _ in range(seeds)]
    n = np.array([p[0] for p in grid], dtype=float)
    d = np.array([p[1] for p in grid], dtype=float)
    loss = law.loss(n, d) * np.exp(sigma * rng.standard_normal(len(grid)))
    try:
        fit = fit_law(n, d, loss, bootstrap=bootstrap, seed=trial, groups=point_groups(n, d))
    except FitError:
        return None
    out: dict[str, float] = {}
    for name in PARAM_NAMES:
        lo, hi = fit.ci(name)
        out[name], out[f"{name}_lo"], out[f"{name}_hi"] = getattr(fit.params, name), lo, hi
    return out


def meets_bar(row: dict[str, float], floor: float) -> bool:
    """Issue 16's bar on one fit: alpha and beta intervals narrower than their estimates, E's
    interval holding the floor and at most E_WIDTH_MAX wide."""
    narrow = all(row[f"{p}_hi"] - row[f"{p}_lo"] < row[p] for p in ("alpha", "beta"))
    e_ok = row["E_lo"] <= floor <= row["E_hi"] and row["E_hi"] - row["E_lo"] <= E_WIDTH_MAX
    return bool(narrow and e_ok)


def evaluate_design(
    law: LawParams,
    sizes: Sequence[float],
    tokens: Sequence[float],
    seeds: int,
    sigma: float,
    trials: int = 8,
    bootstrap: int = 60,
) -> dict[str, Any]:
    """Median interval widths of the free fit over `trials` simulated sweeps of one design."""
    rows = [simulate(law, sizes, tokens, seeds, sigma, t, bootstrap) for t in range(trials)]
    fitted = [r for r in rows if r is not None]
    out: dict[str, Any] = {
        "sizes": [float(n) for n in sizes],
        "tokens": [float(d) for d in tokens],
        "seeds": seeds,
        "sigma": sigma,
        "runs": len(sizes) * len(tokens) * seeds,
        "trials": trials,
        "refused": trials - len(fitted),
    }
    if not fitted:
        return out
    for name in ("E", "alpha", "beta"):
        widths = [r[f"{name}_hi"] - r[f"{name}_lo"] for r in fitted]
        out[f"{name}_width"] = float(np.median(widths))
        out[f"{name}_width_over_estimate"] = float(
            np.median([w / r[name] for w, r in zip(widths, fitted, strict=True)])
        )
    out["E_error"] = float(np.median([abs(r["E"] - law.E) for r in fitted]))
    out["E_covered"] = sum(r["E_lo"] <= law.E <= r["E_hi"] for r in fitted) / len(fitted)
    out["meets_bar"] = sum(meets_bar(r, law.E) for r in fitted) / len(fitted)
    return out


def law_from_fits(fits: dict[str, Any], arch: str, which: str = "fixed_floor") -> LawParams:
    """The planted law: fits.json's `fixed_floor` (E at the exact floor) or free (`free`) fit."""
    if arch not in fits or "error" in fits[arch]:
        raise ValueError(f"fits.json has no fit for arch {arch!r}: {fits.get(arch)}")
    entry = fits[arch] if which == "free" else fits[arch].get(which)
    if not entry or "error" in entry:
        raise ValueError(f"fits.json[{arch!r}] has no {which!r} fit: {entry}")
    return LawParams(*(float(entry[p]) for p in PARAM_NAMES))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.scaling.design", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--fits", required=True, help="fits.json whose law is planted")
    parser.add_argument("--arch", default="dense", help="the arch_kind of the fit (default dense)")
    parser.add_argument("--law", choices=["fixed_floor", "free"], default="fixed_floor")
    parser.add_argument("--sizes", type=float, nargs="+", required=True, help="N of each size")
    parser.add_argument("--tokens", type=float, nargs="+", required=True, help="token budgets")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="seeds per point")
    parser.add_argument("--sigma", type=float, nargs="*", default=[], help="relative seed noise")
    parser.add_argument(
        "--noise-from", default=None, help="runs.parquet with seed replicates (of --arch)"
    )
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--bootstrap", type=int, default=60)
    parser.add_argument("--out", required=True, help="design.json to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        law = law_from_fits(json.loads(Path(args.fits).read_text()), args.arch, args.law)
        sigmas = list(args.sigma)
        noise = None
        if args.noise_from:
            runs = pl.read_parquet(args.noise_from)
            noise = seed_noise(runs.filter(pl.col("arch_kind") == args.arch))
            sigmas.append(noise["sigma"])
        if not sigmas:
            raise ValueError("give --sigma or --noise-from (runs with 2+ seeds per point)")
    except (OSError, ValueError, KeyError, json.JSONDecodeError, pl.exceptions.PolarsError) as err:
        print(f"nanigpt.scaling.design: {err}", file=sys.stderr)
        return 2
    designs = []
    for seeds, sigma in itertools.product(args.seeds, sigmas):
        row = evaluate_design(
            law, args.sizes, args.tokens, seeds, sigma, args.trials, args.bootstrap
        )
        log.info(
            f"{seeds} seed(s), sigma {sigma:.3f}: E width {row.get('E_width', math.nan):.3f}, "
            f"alpha width/estimate {row.get('alpha_width_over_estimate', math.nan):.2f}, "
            f"beta width/estimate {row.get('beta_width_over_estimate', math.nan):.2f}, "
            f"bar met in {row.get('meets_bar', 0):.0%} of {args.trials} trials"
        )
        designs.append(row)
    law_dict = {p: getattr(law, p) for p in PARAM_NAMES}
    write_json_atomic(
        args.out, {"law": law_dict, "arch": args.arch, "noise": noise, "designs": designs}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
