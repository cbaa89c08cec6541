"""Figures of expert specialization and of the MoE-dense crossover (Altair, SVG).

Serves core question 3 (when and why do MoEs win): what the experts learn about the known sources
of the synthetic mixture, how well the load is balanced as capacity and expert count vary, and
where an MoE overtakes the dense model as compute grows. Five figures, each a subcommand:

- `heatmap`: per MoE layer, the expert x source matrix of a run's final model, coloured by
  P(source | expert) (the share of an expert's tokens that each source wrote), titled with the
  normalised mutual information I(expert; source) / H(source) (`nanigpt.analysis.specialization`).
- `mi`: normalised MI against training step for every analysed run (mixture-trained MoE and the
  single-source control), one line per run and layer, so one sees specialization emerge.
- `load`: load balance (coefficient of variation of per-expert load) and the dropped fraction
  against the capacity factor across a sweep's runs, one colour per expert count.
- `experts`: the final model's normalised MI and load CV against the number of routed experts,
  one line per (top-k, capacity factor, granularity). E experts carry at most ln E nats about the
  source, so the normalised MI is bounded by min(1, ln E / H(source)), drawn dashed: with fewer
  experts than sources it cannot reach 1, and with one expert it is exactly 0.
- `crossover`: validation loss of MoE minus dense against training compute, in two panels:
  *matched active compute* (left; points, and lines for the differences of the fitted
  compute-optimal frontiers where the runs allow a fit) and *matched total parameters* (right, when
  the runs hold such partners), drawn at the MoE run's compute. The pairs and the fits are
  computed by `nanigpt.scaling.crossover` (which says how partners are matched); the CLI writes the
  fits beside the figure. The seeds of one setting are drawn as one point, their mean, with the
  range over seeds as a bar, hollow when the range includes zero (no difference;
  `nanigpt.scaling.seeds`).

CLI: `python -m nanigpt.plots.moe heatmap --spec specialization.json --out heatmap.svg`
     `python -m nanigpt.plots.moe mi --spec A.json [B.json ...] --out mi_vs_step.svg`
     `python -m nanigpt.plots.moe load --spec A.json [B.json ...] --out load_vs_capacity.svg`
     `python -m nanigpt.plots.moe experts --spec A.json [B.json ...] --out experts.svg`
     `python -m nanigpt.plots.moe crossover --summaries results/runs/*/summary.json
      --out crossover.svg --fits-out crossover_fits.json [--loss final_val_bpb] [--bootstrap 20]`
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import altair as alt
import numpy as np
import polars as pl

from nanigpt.io import read_json, write_json_atomic
from nanigpt.plots import save_from_cli
from nanigpt.scaling.crossover import (
    DROPLESS,
    MATCHED_PARAMS_TOLERANCE,
    capacity_label,
    crossover_fits,
    frontier_differences,
    matched_params_differences,
    paired_differences,
    runs_table,
)
from nanigpt.scaling.seeds import summarise


def _run_label(spec: dict[str, Any]) -> str:
    cf = capacity_label(spec.get("capacity_factor"))
    return (
        f"{spec.get('run_id')} (E={spec.get('num_experts')}, k={spec.get('top_k')}, cf={cf}, "
        f"g={spec.get('granularity')})"
    )


def _experts_label(spec: dict[str, Any]) -> str:
    routed = spec.get("num_routed_experts", spec.get("num_experts"))
    granularity = spec.get("granularity") or 1
    return f"E={routed}" + (f" (g={granularity})" if granularity > 1 else "")


def _leading_int(label: str) -> tuple[int, str]:
    """Sort key of labels like 'E=16 (g=4)' or 'moeE8: E=8 k=1 ...': the first E=<int>, then text."""
    match = re.search(r"E=(\d+)", label)
    return (int(match.group(1)) if match else -1, label)


# --- expert x source heatmap ---------------------------------------------------------------------


def heatmap_chart(spec: dict[str, Any], which: str = "top1") -> alt.HConcatChart:
    """One expert x source panel per MoE layer of the final model."""
    final = spec["final"]
    panels = []
    for layer in final["layers"]:
        counts = np.asarray(layer[f"counts_{which}"], dtype=np.float64)
        per_expert = counts.sum(1, keepdims=True)
        share = np.divide(counts, per_expert, out=np.zeros_like(counts), where=per_expert > 0)
        rows = [
            {
                "expert": e,
                "source": s,
                "count": int(counts[e, s]),
                "share": float(share[e, s]),
                "expert_load": float(layer["load"][e]),
            }
            for e in range(counts.shape[0])
            for s in range(counts.shape[1])
        ]
        nmi = layer[f"normalized_mi_{which}"]
        nmi_text = f"{nmi:.3f}" if nmi is not None else "undefined (one source)"
        title = alt.TitleParams(
            f"layer {layer['layer']}",
            subtitle=[
                f"I(expert; source)/H(source) = {nmi_text}",
                f"load CV {layer['load_cv']:.2f}, dropped {layer['dropped_frac']:.1%}",
            ],
        )
        base = alt.Chart(alt.Data(values=rows)).encode(
            x=alt.X("source:O", title="source (ground truth)"),
            y=alt.Y("expert:O", title="expert"),
        )
        rect = base.mark_rect().encode(
            color=alt.Color(
                "share:Q",
                title="P(source | expert)",
                scale=alt.Scale(domain=[0, 1], scheme="blues"),
            ),
            tooltip=["expert:O", "source:O", "count:Q", "share:Q", "expert_load:Q"],
        )
        text = base.mark_text(fontSize=9).encode(
            text=alt.Text("count:Q", format=".2~s"),
            color=alt.condition("datum.share > 0.6", alt.value("white"), alt.value("black")),
        )
        size = 18 * counts.shape[1]
        panels.append(
            (rect + text).properties(
                width=max(120, size), height=max(80, 18 * counts.shape[0]), title=title
            )
        )
    choice = "first choice" if which == "top1" else "all k choices"
    return alt.hconcat(*panels).properties(
        title=alt.TitleParams(
            f"Expert x source: {spec['run_id']} (step {final['step']})",
            subtitle=[
                f"{_run_label(spec)}; counts of the router's {choice} over "
                f"{spec['tokens_analysed']} validation tokens of {Path(spec['val']).name}",
                "colour: share of each expert's tokens written by each source",
            ],
            anchor="start",
        )
    )


# --- normalised MI over training -------------------------------------------------------------------


def mi_rows(specs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for spec in specs:
        for entry in spec["over_training"]:
            for layer in entry["layers"]:
                rows.append(
                    {
                        "run": f"{spec['run_id']} ({spec.get('dataset')})",
                        "step": entry["step"],
                        **_layer_mi(spec, layer),
                    }
                )
    return rows


def _layer_mi(spec: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """The MI fields of one MoE layer of a specialization file, as the figures' rows name them."""
    return {
        "dataset": spec.get("dataset"),
        "layer": f"layer {layer['layer']}",
        "normalized_mi": layer["normalized_mi_top1"],
        "mi_nats": layer["mi_top1_nats"],
        "reason": layer["normalized_mi_reason"],
    }


def mi_chart(specs: Sequence[dict[str, Any]]) -> alt.LayerChart:
    rows = mi_rows(specs)
    shown = [r for r in rows if r["normalized_mi"] is not None and r["step"] is not None]
    subtitle = [
        "normalised mutual information of the router's first choice and the token's true source, "
        "on the evaluation shard of each run",
        "0: routing ignores the source; 1: the expert determines the source",
    ]
    for run in sorted({r["run"] for r in rows} - {r["run"] for r in shown}):
        reason = next(r["reason"] for r in rows if r["run"] == run) or "no step recorded"
        subtitle.append(f"{run}: not drawn, {reason[:90]}")
    x = alt.X("step:Q", title="training step")
    y = alt.Y("normalized_mi:Q", title="I(expert; source) / H(source)", scale=alt.Scale(zero=True))
    colour = alt.Color("run:N", title="run (training data)")
    data = alt.Data(values=shown)
    line = (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(
            x=x,
            y=y,
            color=colour,
            strokeDash=alt.StrokeDash("layer:N", title="MoE layer"),
            tooltip=["run:N", "layer:N", "step:Q", "normalized_mi:Q", "mi_nats:Q"],
        )
    )
    return line.properties(
        width=560,
        height=340,
        title=alt.TitleParams(
            "Expert specialization over training: mixture vs single-source control",
            subtitle=subtitle,
            anchor="start",
        ),
    )


# --- load balance vs capacity factor ---------------------------------------------------------------


def load_rows(specs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for spec in specs:
        for layer in spec["final"]["layers"]:
            rows.append(
                {
                    "run_id": spec["run_id"],
                    "capacity": capacity_label(spec.get("capacity_factor")),
                    "experts": _experts_label(spec),
                    "top_k": spec.get("top_k"),
                    "layer": layer["layer"],
                    "load_cv": layer["load_cv"],
                    "dropped_frac": layer["dropped_frac"],
                }
            )
    return rows


def load_chart(specs: Sequence[dict[str, Any]]) -> alt.HConcatChart:
    rows = load_rows(specs)
    numeric = sorted({r["capacity"] for r in rows if r["capacity"] != DROPLESS}, key=float)
    order = numeric + ([DROPLESS] if any(r["capacity"] == DROPLESS for r in rows) else [])
    x = alt.X("capacity:O", title="capacity factor", sort=order)
    experts = sorted({r["experts"] for r in rows}, key=_leading_int)
    colour = alt.Color("experts:N", title="routed experts", sort=experts)
    tooltip = ["run_id:N", "capacity:N", "experts:N", "top_k:Q", "layer:Q", "load_cv:Q"]
    tooltip.append("dropped_frac:Q")
    base = alt.Chart(alt.Data(values=rows)).encode(
        x=x, color=colour, shape=alt.Shape("top_k:N", title="top-k"), tooltip=tooltip
    )
    cv = base.mark_point(filled=True, size=70, opacity=0.8).encode(
        y=alt.Y("load_cv:Q", title="load coefficient of variation (0 = balanced)"),
        xOffset="experts:N",
    )
    dropped = base.mark_point(filled=True, size=70, opacity=0.8).encode(
        y=alt.Y("dropped_frac:Q", title="dropped assignments", axis=alt.Axis(format="%")),
        xOffset="experts:N",
    )
    return alt.hconcat(
        cv.properties(width=300, height=260), dropped.properties(width=300, height=260)
    ).properties(
        title=alt.TitleParams(
            "Load balance against capacity factor",
            subtitle=[
                "final model of each run, one point per MoE layer; load = share of router "
                "assignments per expert (before capacity) on validation tokens",
            ],
            anchor="start",
        )
    )


# --- specialization and balance vs expert count ----------------------------------------------------


def experts_rows(specs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run and MoE layer of the final model, with the MI ceiling min(1, ln E / H(S))."""
    rows = []
    for spec in specs:
        cf = capacity_label(spec.get("capacity_factor"))
        granularity = spec.get("granularity") or 1
        series = f"top-{spec.get('top_k')}, cf {cf}" + (
            f", g={granularity}" if granularity > 1 else ""
        )
        for layer in spec["final"]["layers"]:
            experts = int(layer["num_experts"])
            h_source = layer["h_source_nats"]
            ceiling = min(1.0, math.log(experts) / h_source) if h_source > 0 else None
            rows.append(
                {
                    "run_id": spec["run_id"],
                    "series": series,
                    "experts": experts,
                    "top_k": spec.get("top_k"),
                    **_layer_mi(spec, layer),
                    "mi_ceiling": ceiling,
                    "load_cv": layer["load_cv"],
                    "dropped_frac": layer["dropped_frac"],
                }
            )
    return rows


def experts_chart(specs: Sequence[dict[str, Any]]) -> alt.HConcatChart:
    rows = experts_rows(specs)
    if not rows:
        raise ValueError("the specialization files hold no MoE layer: nothing to draw")
    shown = [r for r in rows if r["normalized_mi"] is not None]
    counts = sorted({r["experts"] for r in rows})
    x = alt.X(
        "experts:Q",
        title="routed experts E (log scale)",
        scale=alt.Scale(type="log", base=2, domain=[counts[0], counts[-1]], nice=False),
        axis=alt.Axis(values=counts, format="d"),
    )
    series = sorted({r["series"] for r in rows})
    colour = alt.Color("series:N", title="routing", sort=series)
    dash = alt.StrokeDash("layer:N", title="MoE layer", legend=alt.Legend(symbolType="stroke"))
    tooltip = ["run_id:N", "experts:Q", "layer:N", "normalized_mi:Q", "mi_nats:Q", "load_cv:Q"]
    ceiling_rows = {}
    for r in shown:
        if r["mi_ceiling"] is not None:
            ceiling_rows.setdefault(r["experts"], []).append(r["mi_ceiling"])
    ceiling = [
        {"experts": e, "mi_ceiling": float(np.mean(v))} for e, v in sorted(ceiling_rows.items())
    ]
    mi_layers = [
        alt.Chart(alt.Data(values=shown))
        .mark_line(point=True)
        .encode(
            x=x,
            y=alt.Y(
                "normalized_mi:Q",
                title="I(expert; source) / H(source), final model",
                scale=alt.Scale(domain=[0, 1]),
            ),
            color=colour,
            strokeDash=dash,
            tooltip=tooltip,
        )
    ]
    if ceiling:
        mi_layers.insert(
            0,
            alt.Chart(alt.Data(values=ceiling))
            .mark_line(color="grey", strokeDash=[2, 3])
            .encode(x=x, y="mi_ceiling:Q"),
        )
    cv = (
        alt.Chart(alt.Data(values=rows))
        .mark_line(point=True)
        .encode(
            x=x,
            y=alt.Y("load_cv:Q", title="load coefficient of variation (0 = balanced)"),
            color=colour,
            strokeDash=dash,
            tooltip=[*tooltip, "dropped_frac:Q"],
        )
    )
    subtitle = [
        "final model of each run on the evaluation shard; router's first choice; grey dashed: the "
        "ceiling min(1, ln E / H(source)), as E experts carry at most ln E nats",
    ]
    by_run: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_run.setdefault(r["run_id"], []).append(r)
    for run_id, layers in sorted(by_run.items(), key=lambda kv: (kv[1][0]["experts"], kv[0])):
        nmi = ", ".join(
            "null" if r["normalized_mi"] is None else f"{r['normalized_mi']:.3f}" for r in layers
        )
        load = ", ".join("null" if r["load_cv"] is None else f"{r['load_cv']:.2f}" for r in layers)
        subtitle.append(
            f"{run_id} (E={layers[0]['experts']}, {layers[0]['series']}): I/H per layer {nmi}; "
            f"load CV {load}"
        )
    return alt.hconcat(
        alt.layer(*mi_layers).properties(width=300, height=260),
        cv.properties(width=300, height=260),
    ).properties(
        title=alt.TitleParams(
            "Specialization and load balance against expert count",
            subtitle=subtitle,
            anchor="start",
        )
    )


# --- crossover: loss difference MoE - dense vs compute ---------------------------------------------


def _matched_summary(label: str, points: list[dict[str, Any]], unit: str) -> str:
    """One line per arch of the matched-parameter panel: its seed-averaged points' verdicts."""
    deltas = [r["delta"] for r in points]
    counts = Counter(r["verdict"] for r in points)
    verdicts = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    wins = sum(d < 0 for d in deltas)
    return (
        f"{label}: matched params, MoE - dense median {float(np.median(deltas)):+.3f} {unit} "
        f"(range {min(deltas):+.3f} to {max(deltas):+.3f}), MoE lower in {wins} of {len(deltas)} "
        f"seed-averaged points ({verdicts})"
    )


def crossover_chart(
    table: pl.DataFrame, fits: dict[str, Any], loss: str = "final_val_bpb"
) -> alt.HConcatChart:
    from nanigpt.scaling.fit import LOSS_UNITS, crossover_text

    keys = ("line", "run_id")  # seeds of one setting become one point: mean and range
    points = summarise(paired_differences(table, loss), keys)
    matched = summarise(matched_params_differences(table, loss), keys)
    lines = frontier_differences(fits)
    if not points and not lines and not matched:
        raise ValueError(
            "no MoE run has a dense partner (same n_layer, d_model, mlp_ratio and tokens, or the "
            "same tokens and total parameters) and no fit succeeded: nothing to draw; the sweep "
            "needs dense runs beside its MoE runs"
        )
    unit = LOSS_UNITS.get(loss, "")
    x = alt.X(
        "flops:Q",
        title="training compute of the MoE run (FLOPs, counted, log scale)",
        scale=alt.Scale(type="log"),
        axis=alt.Axis(format="~e", labelOverlap="greedy", labelSeparation=6),
    )
    y = alt.Y("delta:Q", title=f"loss MoE - dense ({unit}); below 0: MoE wins")
    order = sorted({r["line"] for r in points + lines + matched}, key=_leading_int)
    colour = alt.Color("line:N", title="architecture", sort=order)
    zero = alt.Chart(alt.Data(values=[{"delta": 0.0}])).mark_rule(color="black").encode(y=y)

    def point_layer(rows: list[dict[str, Any]], ratio: str, shape: str) -> alt.LayerChart:
        """Seed mean (filled when every seed agrees on the sign, hollow: no difference) and the
        range over seeds as a bar."""
        base = alt.Chart(alt.Data(values=rows))
        bars = base.mark_rule(strokeWidth=1.5).encode(
            x=x, y=alt.Y("delta_lo:Q"), y2="delta_hi:Q", color=colour
        )
        marks = base.mark_point(size=60, strokeWidth=1.5, shape=shape).encode(
            x=x,
            y=y,
            color=colour,
            fill=alt.condition(
                "datum.beyond_spread",
                alt.Color("line:N", sort=order, legend=None),
                alt.value("white"),
            ),
            tooltip=["run_id:N", "dense_run_id:N", "delta:Q", "delta_lo:Q", "delta_hi:Q"]
            + ["seeds:Q", "verdict:N", f"{ratio}:Q", "total_over_dense_params:Q"],
        )
        return alt.layer(bars, marks)

    active = [zero]
    if lines:
        active.append(
            alt.Chart(alt.Data(values=lines))
            .mark_line(strokeWidth=2, clip=True)
            .encode(x=x, y=y, color=colour)
        )
    if points:
        active.append(point_layer(points, "active_over_dense_flops", "circle"))
    panels = [
        alt.layer(*active).properties(
            width=440,
            height=340,
            title=alt.TitleParams(
                "matched active compute",
                subtitle=[
                    "points: MoE run minus the dense run of the same depth, width, MLP ratio, "
                    "tokens and seed;",
                    "mean over seeds, bar: their range; hollow: the range includes 0 (no "
                    "difference)",
                    "lines: difference of fitted compute-optimal frontiers (Chinchilla approach 3)",
                ],
            ),
        )
    ]
    if matched:
        panels.append(
            alt.layer(zero, point_layer(matched, "dense_over_moe_flops", "triangle-up")).properties(
                width=320,
                height=340,
                title=alt.TitleParams(
                    "matched total parameters",
                    subtitle=[
                        "MoE run minus the dense run of the same tokens and",
                        f"total parameters (within {MATCHED_PARAMS_TOLERANCE:.0%}): MLP E x wider,",
                        "so about E times the MoE's MLP FLOPs per token",
                    ],
                ),
            )
        )
    subtitle = []
    for label, entry in sorted(fits.items(), key=lambda kv: _leading_int(kv[0])):
        if label == "dense":
            if "error" in entry:
                subtitle.append(f"dense: fit refused, no lines: {entry['error'][:90]}")
            continue
        if "error" in entry:
            subtitle.append(f"{label}: fit refused ({entry['error'][:70]})")
            continue
        subtitle.append(crossover_text(entry.get("crossover_vs_dense") or {}, label))
    by_line: dict[str, list[dict[str, Any]]] = {}
    for r in matched:
        by_line.setdefault(r["line"], []).append(r)
    for label in sorted(by_line, key=_leading_int):
        subtitle.append(_matched_summary(label, by_line[label], unit))
    if not matched:
        subtitle.append(
            f"matched total parameters: no dense run has an MoE run's total parameters (within "
            f"{MATCHED_PARAMS_TOLERANCE:.0%}, same tokens); a dense arch with mlp_ratio E times "
            f"the model's adds that panel"
        )
    return (
        alt.hconcat(*panels)
        .resolve_scale(y="shared", color="shared")
        .properties(
            title=alt.TitleParams(
                "Where MoE overtakes dense: loss difference against compute",
                subtitle=subtitle,
                anchor="start",
            )
        )
    )


# --- CLI ----------------------------------------------------------------------------------------


def _read_specs(paths: Sequence[str]) -> list[dict[str, Any]]:
    return [read_json(p, what="specialization file") for p in paths]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.plots.moe",
        description="MoE specialization and crossover figures.",
        fromfile_prefix_chars="@",  # `@LIST`: a file of arguments, one a line
    )
    sub = parser.add_subparsers(dest="figure", required=True)
    heat = sub.add_parser("heatmap", help="expert x source matrices per layer of one run")
    heat.add_argument("--spec", required=True, help="specialization.json of one run")
    heat.add_argument("--counts", choices=["top1", "all"], default="top1")
    heat.add_argument("--out", required=True)
    mi = sub.add_parser("mi", help="normalised MI vs training step")
    mi.add_argument("--spec", nargs="+", required=True, help="specialization.json files (or @LIST)")
    mi.add_argument("--out", required=True)
    load = sub.add_parser("load", help="load CV and drops vs capacity factor")
    load.add_argument(
        "--spec", nargs="+", required=True, help="specialization.json files (or @LIST)"
    )
    load.add_argument("--out", required=True)
    experts = sub.add_parser("experts", help="normalised MI and load CV vs expert count")
    experts.add_argument(
        "--spec", nargs="+", required=True, help="specialization.json files (or @LIST)"
    )
    experts.add_argument("--out", required=True)
    cross = sub.add_parser("crossover", help="loss MoE - dense vs compute")
    cross.add_argument(
        "--summaries", nargs="+", required=True, help="summary.json of each run (or @LIST)"
    )
    cross.add_argument("--out", required=True)
    cross.add_argument("--fits-out", required=True, help="fits.json-style JSON to write")
    cross.add_argument(
        "--loss", default="final_val_bpb", choices=["final_val_bpb", "final_val_loss"]
    )
    cross.add_argument("--bootstrap", type=int, default=20)
    cross.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def build() -> alt.TopLevelMixin:
        if args.figure == "heatmap":
            return heatmap_chart(read_json(args.spec, what="specialization file"), args.counts)
        if args.figure in ("mi", "load", "experts"):
            chart_of = {"mi": mi_chart, "load": load_chart, "experts": experts_chart}
            return chart_of[args.figure](_read_specs(args.spec))
        table = runs_table(args.summaries)
        fits = crossover_fits(table, args.loss, args.bootstrap, args.seed)
        chart = crossover_chart(table, fits, args.loss)
        write_json_atomic(args.fits_out, fits)
        return chart

    return save_from_cli(build, args.out)


if __name__ == "__main__":
    sys.exit(main())
