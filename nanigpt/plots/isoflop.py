"""IsoFLOP profiles: loss against model size at fixed compute, and the optima they imply.

Serves core question 4 (what do scaling laws feel like in practice? for a given compute budget, what
is the best way to spend it?) with Chinchilla approach 2 (Hoffmann et al. 2022, section 3.2 and
figure 3), which assumes no form for L(N, D): per architecture, the left panel holds each run's
validation loss against its parameters N (log x), one colour per training budget, the parabola in
ln N fitted to each budget (`nanigpt.scaling.isoflop`) and its minimum (diamond); the right panel
holds the minima as N_opt and D_opt against compute C (log-log) with the fitted power laws
N_opt ∝ C^a, D_opt ∝ C^b, exponents in the legend. A budget without a minimum (too few sizes, not
convex, or a minimum outside the sizes tried) keeps its points and its parabola, dashed, and the
subtitle says why; an architecture whose fit was refused keeps its left panel.

CLI: `python -m nanigpt.plots.isoflop --isoflop results/scaling/isoflop_SWEEP.json
--out results/scaling/isoflop_SWEEP.svg [--title TEXT]`
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any

import altair as alt
import numpy as np

from nanigpt.io import read_json
from nanigpt.plots import log_axis, save_from_cli
from nanigpt.scaling.fit import LOSS_UNITS

TITLE = "IsoFLOP profiles (Chinchilla approach 2)"
CURVE_POINTS = 60  # samples of each drawn parabola


def budget_label(flops: float) -> str:
    return f"{flops:.3g} FLOPs"


def _budgets(entry: dict[str, Any]) -> list[tuple[dict[str, Any], bool]]:
    """Every budget of an arch entry with whether it gave a minimum, in increasing compute."""
    both = [(b, True) for b in entry.get("budgets") or []]
    both += [(b, False) for b in entry.get("skipped_budgets") or []]
    return sorted(both, key=lambda pair: pair[0]["flops"])


def profile_rows(entry: dict[str, Any]) -> tuple[list[dict], list[dict], list[dict]]:
    """(run points, parabola samples, minima) of one arch entry of isoflop.json."""
    points, curves, minima = [], [], []
    for budget, fitted in _budgets(entry):
        label = budget_label(budget["flops"])
        ns, losses = budget.get("n") or [], budget.get("loss") or []
        run_ids = budget.get("run_ids") or [None] * len(ns)
        for n, loss, run_id in zip(ns, losses, run_ids, strict=False):
            if n is not None and loss is not None:
                points.append(
                    {"budget": label, "flops": budget["flops"], "n": n, "loss": loss, "run": run_id}
                )
        coefficients = budget.get("coefficients")
        if coefficients and ns:
            lo, hi = math.log(min(ns)), math.log(max(ns))
            pad = 0.1 * (hi - lo)
            for x in np.linspace(lo - pad, hi + pad, CURVE_POINTS):
                curves.append(
                    {
                        "budget": label,
                        "flops": budget["flops"],
                        "n": math.exp(x),
                        "loss": float(np.polyval(coefficients, x)),
                        "fit": "minimum found" if fitted else "no minimum (dashed)",
                    }
                )
        if fitted:
            minima.append(
                {
                    "budget": label,
                    "flops": budget["flops"],
                    "n": budget["n_opt"],
                    "loss": budget["loss_opt"],
                    "d_opt": budget["d_opt"],
                }
            )
    return points, curves, minima


def optimum_rows(entry: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """(N_opt and D_opt per budget, their fitted power laws over the budgets' range)."""
    if "error" in entry or not entry.get("budgets"):
        return [], []
    names = {
        "n": f"N_opt ∝ C^{entry['n_opt_exponent']:.2f}{_se(entry.get('n_opt_exponent_se'))}",
        "d": f"D_opt ∝ C^{entry['d_opt_exponent']:.2f}{_se(entry.get('d_opt_exponent_se'))}",
    }
    points = []
    for budget in entry["budgets"]:
        points.append({"flops": budget["flops"], "value": budget["n_opt"], "quantity": names["n"]})
        points.append({"flops": budget["flops"], "value": budget["d_opt"], "quantity": names["d"]})
    c = [b["flops"] for b in entry["budgets"]]
    lines = []
    for key in ("n", "d"):
        k, a = entry[f"{key}_opt_coefficient"], entry[f"{key}_opt_exponent"]
        for flops in np.geomspace(min(c) / 1.5, max(c) * 1.5, 20):
            lines.append({"flops": float(flops), "value": k * flops**a, "quantity": names[key]})
    return points, lines


def _se(se: float | None) -> str:
    return f" ± {se:.2f}" if se is not None else ""


def _notes(arch_kind: str, entry: dict[str, Any]) -> list[str]:
    notes = []
    if "error" in entry:
        reason = entry["error"].split(" (budgets skipped:")[0]  # each skipped budget follows
        notes.append(
            f"{arch_kind}: fit refused: {reason[:150]}{'...' if len(reason) > 150 else ''}"
        )
    else:
        notes.append(
            f"{arch_kind}: N_opt ∝ C^{entry['n_opt_exponent']:.3f}, "
            f"D_opt ∝ C^{entry['d_opt_exponent']:.3f} over {len(entry['budgets'])} budgets"
        )
    for budget in entry.get("skipped_budgets") or []:
        reason = budget["reason"]
        reason = reason if len(reason) <= 110 else f"{reason[:107]}..."
        notes.append(f"{arch_kind}, {budget_label(budget['flops'])}: no minimum: {reason}")
    return notes


def arch_panels(arch_kind: str, entry: dict[str, Any], all_budgets: list[str]) -> alt.HConcatChart:
    unit = LOSS_UNITS.get(entry.get("loss_column", ""), "")
    n_column = entry.get("n_column", "N")
    points, curves, minima = profile_rows(entry)
    losses = [p["loss"] for p in points] + [m["loss"] for m in minima] or [0.0, 1.0]
    lo, hi = min(losses), max(losses)
    pad = 0.08 * (hi - lo) or 0.1
    y_scale = alt.Scale(domain=[lo - pad, hi + pad], zero=False, nice=False)
    x = alt.X(
        "n:Q",
        title=f"N = {n_column} (log scale)",
        scale=alt.Scale(type="log", nice=False),
        axis=log_axis([p["n"] for p in points]),
    )
    y = alt.Y("loss:Q", title=f"validation loss ({unit})", scale=y_scale)
    colour = alt.Color(
        "budget:N",
        title="training budget",
        sort=all_budgets,
        scale=alt.Scale(domain=all_budgets, scheme="viridis"),
    )
    layers: list[alt.Chart] = []
    if curves:
        layers.append(
            alt.Chart(alt.Data(values=curves))
            .mark_line(strokeWidth=1.5, clip=True)
            .encode(
                x=x,
                y=y,
                color=colour,
                detail="budget:N",
                strokeDash=alt.StrokeDash(
                    "fit:N",
                    title="parabola in ln N",
                    scale=alt.Scale(
                        domain=["minimum found", "no minimum (dashed)"], range=[[1, 0], [5, 4]]
                    ),
                ),
            )
        )
    layers.append(
        alt.Chart(alt.Data(values=points))
        .mark_point(filled=True, size=60, opacity=0.9)
        .encode(x=x, y=y, color=colour, tooltip=["run:N", "budget:N", "n:Q", "loss:Q"])
    )
    if minima:
        layers.append(
            alt.Chart(alt.Data(values=minima))
            .mark_point(shape="diamond", filled=True, size=180, stroke="black", strokeWidth=1.2)
            .encode(x=x, y=y, color=colour, tooltip=["budget:N", "n:Q", "loss:Q", "d_opt:Q"])
        )
    left = alt.layer(*layers).properties(
        width=380, height=300, title=f"{arch_kind}: loss against N at fixed compute"
    )
    optima, laws = optimum_rows(entry)
    if not optima:
        return alt.hconcat(left)
    cx = alt.X(
        "flops:Q",
        title="training compute C (FLOPs, log scale)",
        scale=alt.Scale(type="log", nice=False),
        axis=log_axis([o["flops"] for o in optima + laws], number_format="~e"),
    )
    cy = alt.Y(
        "value:Q",
        title="N_opt (parameters), D_opt (tokens)",
        scale=alt.Scale(type="log"),
        axis=alt.Axis(format="~s"),
    )
    quantity = alt.Color(
        "quantity:N", title="fitted power law", scale=alt.Scale(range=["#1f77b4", "#ff7f0e"])
    )
    right = alt.layer(
        alt.Chart(alt.Data(values=laws)).mark_line(strokeDash=[4, 3]).encode(cx, cy, quantity),
        alt.Chart(alt.Data(values=optima))
        .mark_point(filled=True, size=90, shape="diamond")
        .encode(cx, cy, quantity, tooltip=["quantity:N", "flops:Q", "value:Q"]),
    ).properties(width=300, height=300, title=f"{arch_kind}: compute-optimal N and D")
    return alt.hconcat(left, right).resolve_scale(color="independent")


def build_chart(isoflop: dict[str, Any], title: str = TITLE) -> alt.VConcatChart:
    if not isinstance(isoflop, dict) or not isoflop:
        raise ValueError("isoflop results hold no architecture (expected {arch_kind: result})")
    for arch_kind, entry in isoflop.items():
        if not isinstance(entry, dict) or not ("budgets" in entry or "error" in entry):
            raise ValueError(f"isoflop results: entry {arch_kind!r} has neither budgets nor error")
    all_flops = sorted(
        {b["flops"] for e in isoflop.values() for b, _ in _budgets(e) if "flops" in b}
    )
    all_budgets = [budget_label(c) for c in all_flops]
    notes = [line for arch, entry in sorted(isoflop.items()) for line in _notes(arch, entry)]
    rows = [arch_panels(arch, isoflop[arch], all_budgets) for arch in sorted(isoflop)]
    return alt.vconcat(*rows).properties(
        title=alt.TitleParams(
            title,
            subtitle=[
                "points: runs; lines: parabola in ln N per budget; diamonds: its minimum",
                "D_opt = C / F(N_opt), F = counted training FLOPs per token, linear in N over "
                "the runs",
                *notes,
            ],
            anchor="start",
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nanigpt.plots.isoflop", description=TITLE)
    parser.add_argument("--isoflop", required=True, help="isoflop.json (nanigpt.scaling.isoflop)")
    parser.add_argument("--out", required=True, help="figure to write (.svg, .png, .html)")
    parser.add_argument("--title", default=TITLE)
    args = parser.parse_args(argv)
    return save_from_cli(
        lambda: build_chart(read_json(args.isoflop, "isoflop results"), args.title), args.out
    )


if __name__ == "__main__":
    sys.exit(main())
