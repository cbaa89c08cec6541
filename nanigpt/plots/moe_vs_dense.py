"""The headline figure: validation loss against training compute, dense vs MoE.

Serves core question 4 (how do dense and MoE scale?). Each run is a point (loss in bits/byte against
its counted training FLOPs, log x), coloured by architecture and shaped and sized by model size.
Over the points lie the compute-optimal frontiers of the fitted laws L(N, D) = E + A/N^alpha +
B/D^beta (Chinchilla approach 3, Hoffmann et al. 2022; fit details after Besiroglu et al. 2024) with
their bootstrap bands, the MoE-dense crossover when it falls inside the plotted range, and the
data's exact entropy floor from `ground_truth.json`, below which no model can go. An architecture
whose fit was refused keeps its points, and the subtitle says why it has no frontier.

CLI: `python -m nanigpt.plots.moe_vs_dense --runs runs.parquet --fits fits.json
--ground-truth ground_truth.json --out results/scaling/moe_vs_dense.svg`
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import altair as alt
import polars as pl

from nanigpt.io import read_json
from nanigpt.plots import arch_colour_scale, log_axis, save_from_cli
from nanigpt.scaling.fit import LOSS_UNITS, crossover_text

TITLE = "Dense vs MoE: validation loss against training compute"


def _loss_column(fits: dict[str, Any]) -> str:
    for entry in fits.values():
        if isinstance(entry, dict) and "loss_column" in entry:
            return entry["loss_column"]
    return "final_val_bpb"


def _n_column(fits: dict[str, Any]) -> str:
    for entry in fits.values():
        if isinstance(entry, dict) and "n_column" in entry:
            return entry["n_column"]
    return "params_non_embedding_active"


def _frontier_rows(fits: dict[str, Any], floor: float | None = None) -> list[dict[str, Any]]:
    """The fitted frontiers' points; none below the data's floor (no model can go there, so a fit
    whose E lies under it draws its frontier only down to the floor), bands clipped at it."""
    rows = []
    for arch_kind, entry in fits.items():
        if not isinstance(entry, dict) or "error" in entry:
            continue
        flops = entry.get("frontier_flops") or []
        loss = entry.get("frontier_loss") or []
        lo = entry.get("frontier_loss_lo") or [None] * len(flops)
        hi = entry.get("frontier_loss_hi") or [None] * len(flops)
        for c, y, y_lo, y_hi in zip(flops, loss, lo, hi, strict=False):
            if c is None or y is None or (floor is not None and y < floor):
                continue
            if floor is not None and y_lo is not None:
                y_lo = max(y_lo, floor)
            rows.append(
                {"arch_kind": arch_kind, "flops": c, "loss": y, "loss_lo": y_lo, "loss_hi": y_hi}
            )
    return rows


def _law_text(entry: dict[str, Any]) -> str:
    """E, alpha, beta with their 95% intervals: 'E=0.61 [0.5, 0.7], α=0.52 [0.4, 0.6], ...'."""

    def num(x: float, digits: int) -> str:  # E on its lower bound (e^-20) reads as 0
        return "0" if abs(x) < 1e-6 else f"{x:.{digits}g}"

    def one(name: str, label: str) -> str:
        lo, hi = entry.get(f"{name}_ci") or (None, None)
        ci = f" [{num(lo, 2)}, {num(hi, 2)}]" if lo is not None and hi is not None else ""
        return f"{label}={num(entry[name], 3)}{ci}"

    return ", ".join(one(n, lab) for n, lab in (("E", "E"), ("alpha", "α"), ("beta", "β")))


def _subtitle(fits: dict[str, Any], n_column: str, arch_kinds: list[str]) -> list[str]:
    lines = [
        "lines: compute-optimal frontier of L(N, D) = E + A/N^α + B/D^β (Chinchilla approach 3), "
        "bands: 95% bootstrap over runs",
        f"N = {n_column}; compute = counted forward+backward FLOPs",
    ]
    for arch_kind in arch_kinds:
        entry = fits.get(arch_kind)
        if entry is None:
            lines.append(f"{arch_kind}: no fit in fits.json")
        elif "error" in entry:
            reason = entry["error"]
            reason = reason if len(reason) <= 110 else f"{reason[:107]}..."
            lines.append(f"{arch_kind}: fit refused (no frontier drawn): {reason}")
        else:
            lines.append(f"{arch_kind}: {_law_text(entry)} ({entry['n_points']} runs)")
            fixed = entry.get("fixed_floor") or {}
            if "alpha" in fixed:
                lines.append(f"{arch_kind}, E fixed at the floor: {_law_text(fixed)}")
            if entry.get("crossover_vs_dense"):
                lines.append(crossover_text(entry["crossover_vs_dense"], arch_kind))
    return lines


def build_chart(
    runs: pl.DataFrame, fits: dict[str, Any], floor_bits_per_byte: float | None
) -> alt.LayerChart:
    loss_column = _loss_column(fits)
    n_column = _n_column(fits)
    unit = LOSS_UNITS.get(loss_column, "")
    if loss_column not in runs.columns:
        raise KeyError(f"runs table lacks the fitted loss column {loss_column!r}")
    columns = ["run_id", "arch_kind", "size", "flops_total", "tokens_trained", loss_column]
    columns += [n_column] if n_column in runs.columns else []
    points = runs.select([c for c in columns if c in runs.columns]).rename({loss_column: "loss"})
    if "size" not in points.columns:
        points = points.with_columns(pl.lit("?").alias("size"))
    arch_kinds = sorted(set(points["arch_kind"].to_list()))
    colour = alt.Color(
        "arch_kind:N",
        title="architecture",
        scale=arch_colour_scale(arch_kinds),
        legend=alt.Legend(symbolOpacity=1, symbolType="circle"),
    )
    frontier = _frontier_rows(fits, floor_bits_per_byte if unit == "bits/byte" else None)

    # The y range holds the points, the floor and a little margin; frontier lines are clipped to it.
    values = points["loss"].to_list()
    if floor_bits_per_byte is not None:
        values.append(floor_bits_per_byte)
    y_lo, y_hi = min(values), max(values)
    pad = 0.08 * (y_hi - y_lo) if y_hi > y_lo else 0.1 * abs(y_hi) or 0.1
    y_scale = alt.Scale(domain=[y_lo - pad, y_hi + pad], zero=False, nice=False)
    flops_all = points["flops_total"].to_list() + [r["flops"] for r in frontier]
    x_scale = alt.Scale(type="log", domain=[min(flops_all), max(flops_all)], nice=False)
    x = alt.X(
        "flops:Q",
        title="training compute (FLOPs, counted, log scale)",
        scale=x_scale,
        axis=log_axis(flops_all, number_format="~e"),
    )
    y = alt.Y("loss:Q", title=f"validation loss ({unit})", scale=y_scale)

    tooltip = ["run_id:N", "arch_kind:N", "size:N", "tokens_trained:Q", "loss:Q"]
    size_enc = alt.value(80)
    if n_column in points.columns:
        tooltip.append(f"{n_column}:Q")
        size_enc = alt.Size(
            f"{n_column}:Q",
            title="N (parameters)",
            scale=alt.Scale(type="log", range=[40, 320]),
            legend=alt.Legend(format="~s", titleLimit=0, labelLimit=0),
        )
    point_layer = (
        alt.Chart(alt.Data(values=points.rename({"flops_total": "flops"}).to_dicts()))
        .mark_point(filled=True, opacity=0.85, stroke="black", strokeWidth=0.5)
        .encode(
            x=x,
            y=y,
            color=colour,
            shape=alt.Shape("size:N", title="model size", legend=alt.Legend(titleLimit=0)),
            size=size_enc,
            tooltip=tooltip,
        )
    )
    layers: list[alt.Chart] = []
    if frontier:
        frontier_data = alt.Data(values=frontier)
        band_rows = [r for r in frontier if r["loss_lo"] is not None and r["loss_hi"] is not None]
        if band_rows:
            layers.append(
                alt.Chart(alt.Data(values=band_rows))
                .mark_area(opacity=0.15, clip=True)
                .encode(x=x, y=alt.Y("loss_lo:Q", scale=y_scale), y2="loss_hi:Q", color=colour)
            )
        layers.append(
            alt.Chart(frontier_data)
            .mark_line(strokeWidth=2, clip=True)
            .encode(x=x, y=y, color=colour, detail="arch_kind:N")
        )
    layers.append(point_layer)

    if floor_bits_per_byte is not None and unit == "bits/byte":
        floor_data = alt.Data(
            values=[
                {
                    "loss": floor_bits_per_byte,
                    "label": f"entropy floor of the data: {floor_bits_per_byte:.3f} bits/byte",
                }
            ]
        )
        layers.append(alt.Chart(floor_data).mark_rule(color="black", strokeDash=[6, 4]).encode(y=y))
        layers.append(
            alt.Chart(floor_data)
            .mark_text(align="left", baseline="bottom", dx=4, dy=-3, fontSize=11)
            .encode(x=alt.value(0), y=y, text="label:N")
        )

    flops_lo, flops_hi = min(flops_all), max(flops_all)
    for arch_kind in arch_kinds:
        crossing = (fits.get(arch_kind) or {}).get("crossover_vs_dense") or {}
        c = crossing.get("flops")
        if c is not None and flops_lo <= c <= flops_hi:
            # A short label beside the rule, on the side with room; the sentence with its CI and
            # bootstrap share is the subtitle's (crossover_text), too long to sit in the plot.
            label = f"{arch_kind} overtakes dense from {c:.2g} FLOPs"
            cross_data = alt.Data(values=[{"flops": c, "label": label}])
            right_half = math.log(c / flops_lo) > 0.5 * math.log(flops_hi / flops_lo)
            layers.append(
                alt.Chart(cross_data).mark_rule(color="gray", strokeDash=[2, 2]).encode(x=x)
            )
            layers.append(
                alt.Chart(cross_data)
                .mark_text(
                    align="right" if right_half else "left",
                    baseline="top",
                    dx=-4 if right_half else 4,
                    dy=4,
                    fontSize=11,
                )
                .encode(x=x, y=alt.value(0), text="label:N")
            )

    return (
        alt.layer(*layers)
        .properties(
            width=640,
            height=420,
            title=alt.TitleParams(
                TITLE, subtitle=_subtitle(fits, n_column, arch_kinds), anchor="start"
            ),
        )
        .resolve_scale(color="shared")
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nanigpt.plots.moe_vs_dense", description=TITLE)
    parser.add_argument("--runs", required=True, help="runs.parquet")
    parser.add_argument("--fits", required=True, help="fits.json")
    parser.add_argument("--ground-truth", required=True, help="the dataset's ground_truth.json")
    parser.add_argument("--out", required=True, help="SVG to write")
    args = parser.parse_args(argv)

    def build() -> alt.LayerChart:
        if not Path(args.runs).is_file():
            raise FileNotFoundError(f"runs table not found: {args.runs}")
        runs = pl.read_parquet(args.runs)
        fits = read_json(args.fits, "fits")
        truth = read_json(args.ground_truth, "ground truth")
        floor = truth.get("floor_bits_per_byte") if isinstance(truth, dict) else None
        if floor is None or not math.isfinite(float(floor)):
            raise ValueError(
                f"{args.ground_truth}: key 'floor_bits_per_byte' missing or not a number: {floor!r}"
            )
        return build_chart(runs, fits, float(floor))

    return save_from_cli(build, args.out)


if __name__ == "__main__":
    sys.exit(main())
