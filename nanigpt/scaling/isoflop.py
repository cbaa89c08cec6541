"""Chinchilla approach 2 (IsoFLOP profiles): the compute-optimal model size read off equal-compute runs.

Serves core question 4 (what do scaling laws feel like in practice?) as a check on approach 3: it
assumes no functional form for L(N, D). Following Hoffmann et al. 2022 (section 3.2), runs are
grouped at equal training compute, a parabola in log N is fitted to each group's losses, its
minimum gives N_opt(C) for that budget (and D_opt = C / flops_per_token(N_opt)), and the minima are
fitted as power laws N_opt = k_N C^a, D_opt = k_D C^b by least squares in log-log space.

Runs count as one budget when their counted FLOPs lie within `rel_tol` of each other (an IsoFLOP
sweep derives tokens from the budget, so its runs' FLOPs agree to rounding).

CLI: `python -m nanigpt.scaling.isoflop --runs runs.parquet --out isoflop.json [--n-column ...]
[--loss final_val_bpb] [--rel-tol 0.1]` writes `{arch_kind: result or {"error": msg}}`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from nanigpt.io import write_json_atomic
from nanigpt.scaling.fit import N_COLUMNS, FitError, FlopsPerToken, jsonable

MIN_SIZES_PER_BUDGET = 3


def group_budgets(flops: np.ndarray, rel_tol: float = 0.1) -> np.ndarray:
    """Label runs by budget: sorted by FLOPs, a new group starts past rel_tol of the group's first."""
    order = np.argsort(flops)
    labels = np.empty(len(flops), dtype=int)
    group, start = -1, None
    for i in order:
        if start is None or flops[i] > start * (1 + rel_tol):
            group, start = group + 1, flops[i]
        labels[i] = group
    return labels


def parabola_minimum(n: np.ndarray, loss: np.ndarray) -> tuple[float, float, float]:
    """Fit loss = p2 (log N)^2 + p1 log N + p0; return (N at the minimum, loss there, p2).

    Raises FitError when the profile is not convex (no minimum) or its minimum lies outside the
    sizes tried (an extrapolated optimum says only that the sweep missed it).
    """
    x = np.log(n)
    p2, p1, p0 = np.polyfit(x, loss, 2)
    if p2 <= 0:
        raise FitError(f"profile is not convex in log N (curvature {p2:.3g})")
    x_opt = -p1 / (2 * p2)
    if not (x.min() <= x_opt <= x.max()):
        raise FitError(
            f"minimum at N = {math.exp(x_opt):.3g} lies outside the sizes tried "
            f"[{n.min():.3g}, {n.max():.3g}]"
        )
    return math.exp(x_opt), float(np.polyval([p2, p1, p0], x_opt)), float(p2)


def _power_law(flops: np.ndarray, values: np.ndarray) -> dict[str, Any]:
    """values = coefficient * C^exponent by least squares in log space, with a standard error."""
    x, y = np.log(flops), np.log(values)
    design = np.stack([x, np.ones_like(x)], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    out: dict[str, Any] = {"exponent": float(coef[0]), "coefficient": float(math.exp(coef[1]))}
    if len(x) > 2:
        residual = y - design @ coef
        sigma2 = residual @ residual / (len(x) - 2)
        out["exponent_se"] = float(math.sqrt(sigma2 / np.sum((x - x.mean()) ** 2)))
    else:
        out["exponent_se"] = None
    return out


def isoflop_fit(
    flops: Any,
    n: Any,
    loss: Any,
    *,
    flops_per_token: FlopsPerToken | None = None,
    rel_tol: float = 0.1,
) -> dict[str, Any]:
    """Approach 2 over runs given as arrays; FitError when fewer than 2 budgets give a minimum."""
    flops, n, loss = (np.asarray(v, dtype=float) for v in (flops, n, loss))
    flops_per_token = flops_per_token or FlopsPerToken.six_n()
    labels = group_budgets(flops, rel_tol)
    budgets, skipped = [], []
    for group in np.unique(labels):
        mask = labels == group
        budget = float(np.exp(np.mean(np.log(flops[mask]))))
        sizes = len(np.unique(n[mask]))
        if sizes < MIN_SIZES_PER_BUDGET:
            skipped.append({"flops": budget, "reason": f"{sizes} model size(s); need 3"})
            continue
        try:
            n_opt, loss_opt, curvature = parabola_minimum(n[mask], loss[mask])
        except FitError as e:
            skipped.append({"flops": budget, "reason": str(e)})
            continue
        budgets.append(
            {
                "flops": budget,
                "n_runs": int(mask.sum()),
                "n_opt": n_opt,
                "d_opt": float(budget / flops_per_token(n_opt)),
                "loss_opt": loss_opt,
                "curvature": curvature,
            }
        )
    if len(budgets) < 2:
        reasons = "; ".join(f"{s['flops']:.3g} FLOPs: {s['reason']}" for s in skipped)
        raise FitError(
            f"{len(budgets)} budget(s) with a fitted minimum; approach 2 needs 2 "
            f"(budgets skipped: {reasons or 'none'})"
        )
    c = np.array([b["flops"] for b in budgets])
    n_law = _power_law(c, np.array([b["n_opt"] for b in budgets]))
    d_law = _power_law(c, np.array([b["d_opt"] for b in budgets]))
    return {
        "budgets": budgets,
        "skipped_budgets": skipped,
        "n_opt_exponent": n_law["exponent"],
        "n_opt_exponent_se": n_law["exponent_se"],
        "n_opt_coefficient": n_law["coefficient"],
        "d_opt_exponent": d_law["exponent"],
        "d_opt_exponent_se": d_law["exponent_se"],
        "d_opt_coefficient": d_law["coefficient"],
        "flops_per_token_model": {
            "kind": flops_per_token.kind,
            "k": flops_per_token.k,
            "c": flops_per_token.c,
        },
        "rel_tol": rel_tol,
    }


def isoflop_all(
    table: pl.DataFrame,
    *,
    loss_column: str = "final_val_bpb",
    n_column: str = "params_non_embedding_active",
    rel_tol: float = 0.1,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arch_kind in sorted(table["arch_kind"].unique().to_list()):
        rows = table.filter(pl.col("arch_kind") == arch_kind)
        n = rows[n_column].to_numpy().astype(float)
        fpt = (
            FlopsPerToken.fit(n, rows["flops_per_token"].to_numpy().astype(float))
            if "flops_per_token" in rows.columns
            else FlopsPerToken.six_n()
        )
        try:
            result = isoflop_fit(
                rows["flops_total"].to_numpy(),
                n,
                rows[loss_column].to_numpy(),
                flops_per_token=fpt,
                rel_tol=rel_tol,
            )
        except FitError as e:
            out[arch_kind] = {"error": str(e), "n_points": rows.height}
            continue
        out[arch_kind] = {**result, "n_column": n_column, "loss_column": loss_column}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.scaling.isoflop",
        description="IsoFLOP profiles per arch_kind (Chinchilla approach 2).",
    )
    parser.add_argument("--runs", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--loss", default="final_val_bpb")
    parser.add_argument("--n-column", default="params_non_embedding_active", choices=N_COLUMNS)
    parser.add_argument("--rel-tol", type=float, default=0.1)
    args = parser.parse_args(argv)
    if not Path(args.runs).is_file():
        print(f"error: runs table not found: {args.runs}", file=sys.stderr)
        return 2
    try:
        table = pl.read_parquet(args.runs)
        result = isoflop_all(
            table, loss_column=args.loss, n_column=args.n_column, rel_tol=args.rel_tol
        )
    except (KeyError, ValueError, pl.exceptions.PolarsError) as e:
        print(f"error: {args.runs}: {e}", file=sys.stderr)
        return 2
    write_json_atomic(args.out, jsonable(result))
    for arch_kind, entry in result.items():
        if "error" in entry:
            print(f"{arch_kind}: approach 2 refused: {entry['error']}", file=sys.stderr)
        else:
            print(
                f"{arch_kind}: N_opt ~ C^{entry['n_opt_exponent']:.3f}, "
                f"D_opt ~ C^{entry['d_opt_exponent']:.3f} over {len(entry['budgets'])} budgets"
            )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
