"""Chinchilla approach 2 (IsoFLOP profiles): the compute-optimal model size read off equal-compute runs.

Serves core question 4 (what do scaling laws feel like in practice?) as a check on approach 3: it
assumes no functional form for L(N, D). Following Hoffmann et al. 2022 (section 3.2), runs are
grouped at equal training compute, a parabola in log N is fitted to each group's losses, its
minimum gives N_opt(C) for that budget (and D_opt = C / flops_per_token(N_opt)), and the minima are
fitted as power laws N_opt = k_N C^a, D_opt = k_D C^b by least squares in log-log space.

Runs count as one budget when their counted FLOPs lie within `rel_tol` of each other, or, given
the declared budgets of an IsoFLOP sweep (`budgets:` in the config, whose runs' tokens are derived
from the budget and rounded to whole batches), each run belongs to the declared budget nearest its
FLOPs in log space (the config refuses budgets so close that rounding could blur them).

CLI: `python -m nanigpt.scaling.isoflop --runs runs.parquet --out isoflop.json [--n-column ...]
[--loss final_val_bpb] [--rel-tol 0.1 | --budgets C1 C2 ...]` writes `{arch_kind: result}`; a
refused fit is `{"error": msg, ...}` with the per-budget profiles it did find. Every budget lists
its runs (`n`, `loss`, `run_ids`) and, where a parabola was fitted, its `coefficients` [p2, p1, p0]
of loss = p2 (ln N)^2 + p1 ln N + p0, so a figure can redraw it.
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


def assign_budgets(flops: np.ndarray, budgets: Sequence[float]) -> np.ndarray:
    """Label runs by the declared budget nearest their FLOPs in log space (index into `budgets`)."""
    log_budgets = np.log(np.asarray(budgets, dtype=float))
    distance = np.abs(np.log(np.asarray(flops, dtype=float))[:, None] - log_budgets[None, :])
    return np.argmin(distance, axis=1)


def fit_parabola(n: np.ndarray, loss: np.ndarray) -> tuple[float, float, float]:
    """Least-squares (p2, p1, p0) of loss = p2 (ln N)^2 + p1 ln N + p0."""
    p2, p1, p0 = np.polyfit(np.log(n), loss, 2)
    return float(p2), float(p1), float(p0)


def parabola_minimum(n: np.ndarray, loss: np.ndarray) -> tuple[float, float, float]:
    """Fit loss = p2 (log N)^2 + p1 log N + p0; return (N at the minimum, loss there, p2).

    Raises FitError when the profile is not convex (no minimum) or its minimum lies outside the
    sizes tried (an extrapolated optimum says only that the sweep missed it).
    """
    x = np.log(n)
    p2, p1, p0 = fit_parabola(n, loss)
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


class IsoflopRefused(FitError):
    """Fewer than 2 budgets gave a minimum; `budgets` and `skipped` hold what was found."""

    def __init__(self, message: str, budgets: list[dict], skipped: list[dict]):
        super().__init__(message)
        self.budgets, self.skipped = budgets, skipped


def budget_profiles(
    flops: np.ndarray,
    n: np.ndarray,
    loss: np.ndarray,
    flops_per_token: FlopsPerToken,
    *,
    rel_tol: float = 0.1,
    budgets: Sequence[float] | None = None,
    run_ids: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per budget, the parabola's minimum (fitted) or why there is none (skipped)."""
    if budgets is not None:
        labels = assign_budgets(flops, budgets)
    else:
        labels = group_budgets(flops, rel_tol)
    fitted, skipped = [], []
    for group in np.unique(labels):
        mask = labels == group
        if budgets is not None:
            budget = float(budgets[group])
        else:
            budget = float(np.exp(np.mean(np.log(flops[mask]))))
        order = np.argsort(n[mask])
        entry: dict[str, Any] = {
            "flops": budget,
            "n_runs": int(mask.sum()),
            "n": n[mask][order].tolist(),
            "loss": loss[mask][order].tolist(),
            "run_flops": flops[mask][order].tolist(),
        }
        if run_ids is not None:
            entry["run_ids"] = [str(r) for r in np.asarray(run_ids, dtype=object)[mask][order]]
        sizes = len(np.unique(n[mask]))
        if sizes < MIN_SIZES_PER_BUDGET:
            skipped.append(
                {**entry, "reason": f"{sizes} model size(s); need {MIN_SIZES_PER_BUDGET}"}
            )
            continue
        entry["coefficients"] = list(fit_parabola(n[mask], loss[mask]))
        try:
            n_opt, loss_opt, curvature = parabola_minimum(n[mask], loss[mask])
        except FitError as e:
            skipped.append({**entry, "reason": str(e)})
            continue
        fitted.append(
            {
                **entry,
                "n_opt": n_opt,
                "d_opt": float(budget / flops_per_token(n_opt)),
                "loss_opt": loss_opt,
                "curvature": curvature,
            }
        )
    return fitted, skipped


def isoflop_fit(
    flops: Any,
    n: Any,
    loss: Any,
    *,
    flops_per_token: FlopsPerToken | None = None,
    rel_tol: float = 0.1,
    budgets: Sequence[float] | None = None,
    run_ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Approach 2 over runs given as arrays; IsoflopRefused (a FitError) when fewer than 2
    budgets give a minimum. With `budgets`, runs are grouped by the nearest declared budget."""
    flops, n, loss = (np.asarray(v, dtype=float) for v in (flops, n, loss))
    flops_per_token = flops_per_token or FlopsPerToken.six_n()
    budgets, skipped = budget_profiles(
        flops, n, loss, flops_per_token, rel_tol=rel_tol, budgets=budgets, run_ids=run_ids
    )
    if len(budgets) < 2:
        reasons = "; ".join(f"{s['flops']:.3g} FLOPs: {s['reason']}" for s in skipped)
        raise IsoflopRefused(
            f"{len(budgets)} budget(s) with a fitted minimum; approach 2 needs 2 "
            f"(budgets skipped: {reasons or 'none'})",
            budgets,
            skipped,
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
    budgets: Sequence[float] | None = None,
) -> dict[str, Any]:
    """`{arch_kind: result}` over a runs table (nanigpt.scaling.aggregate); a refused arch kind
    gets `{"error", "n_points", "budgets", "skipped_budgets"}`."""
    for column in ("arch_kind", "flops_total", n_column, loss_column):
        if column not in table.columns:
            raise KeyError(f"runs table has no column {column!r}")
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
                budgets=budgets,
                run_ids=rows["run_id"].to_list() if "run_id" in rows.columns else None,
            )
        except IsoflopRefused as e:
            out[arch_kind] = {
                "error": str(e),
                "n_points": rows.height,
                "budgets": e.budgets,
                "skipped_budgets": e.skipped,
                "n_column": n_column,
                "loss_column": loss_column,
            }
            continue
        out[arch_kind] = {**result, "n_column": n_column, "loss_column": loss_column}
        if budgets is not None:
            out[arch_kind]["declared_budgets"] = [float(c) for c in budgets]
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
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--rel-tol", type=float, default=0.1, help="group runs by FLOPs within this")
    group.add_argument(
        "--budgets",
        type=float,
        nargs="+",
        help="the sweep's declared budgets (FLOPs): each run joins the nearest in log space",
    )
    args = parser.parse_args(argv)
    if args.budgets is not None and any(c <= 0 for c in args.budgets):
        print(f"error: --budgets must be positive FLOPs, got {args.budgets}", file=sys.stderr)
        return 2
    if not Path(args.runs).is_file():
        print(f"error: runs table not found: {args.runs}", file=sys.stderr)
        return 2
    try:
        table = pl.read_parquet(args.runs)
        result = isoflop_all(
            table,
            loss_column=args.loss,
            n_column=args.n_column,
            rel_tol=args.rel_tol,
            budgets=args.budgets,
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
