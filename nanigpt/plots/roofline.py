"""Roofline chart: is each kind of kernel limited by compute or by memory bandwidth? (question 1)

The roofline model (Williams, Waterman & Patterson 2009): attainable FLOP/s at arithmetic intensity
I (FLOPs per byte moved) is min(peak FLOP/s, I x bandwidth). The roof drawn solid is the device's
*measured* ceilings (`nanigpt.analysis.ceilings`: square matmul FLOP/s, copy bandwidth), the dashed
one the datasheet's when the device has one. Each point is a kernel category of a run's profiled
window (`nanigpt.analysis.report.roofline_points`): counted FLOPs over its kernel time on the y axis,
and on the x axis counted FLOPs over *estimated* bytes (ideal traffic), so every x is an estimate and
an upper bound; the chart says so. Categories without a FLOP count (norm/elementwise, copies,
communication) are not placed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import altair as alt

from nanigpt.plots import save_chart
from nanigpt.plots.breakdown import TRACE_COLOURS


def roof_rows(peak_flops: float, bandwidth: float, lo: float, hi: float, label: str) -> list[dict]:
    """Points of min(peak, I x bandwidth) over [lo, hi] (log-spaced, with the ridge point)."""
    ridge = peak_flops / bandwidth
    xs = sorted({lo, hi, *(x for x in (ridge,) if lo < x < hi)})
    return [
        {"intensity": x, "flops_per_s": min(peak_flops, x * bandwidth), "roof": label} for x in xs
    ]


def roofline_chart(
    points: list[dict[str, Any]],
    hardware: dict[str, Any] | None,
    report: dict[str, Any],
    path: str | Path,
) -> Path:
    placed = [p for p in points if p.get("intensity") and p.get("achieved_flops_per_s")]
    intensities = [p["intensity"] for p in placed]
    roofs: list[dict] = []
    if hardware:
        ridges = [hardware["matmul_flops_per_s"] / hardware["copy_bytes_per_s"]]
        if hardware.get("datasheet_peak_flops") and hardware.get("datasheet_peak_bytes_per_s"):
            ridges.append(hardware["datasheet_peak_flops"] / hardware["datasheet_peak_bytes_per_s"])
        intensities += ridges
    lo = 10 ** math.floor(math.log10(min(intensities) / 3)) if intensities else 0.1
    hi = 10 ** math.ceil(math.log10(max(intensities) * 3)) if intensities else 1e4
    if hardware:
        roofs += roof_rows(
            hardware["matmul_flops_per_s"], hardware["copy_bytes_per_s"], lo, hi, "measured"
        )
        if hardware.get("datasheet_peak_flops") and hardware.get("datasheet_peak_bytes_per_s"):
            roofs += roof_rows(
                hardware["datasheet_peak_flops"],
                hardware["datasheet_peak_bytes_per_s"],
                lo,
                hi,
                "datasheet",
            )
    x = alt.X(
        "intensity:Q",
        scale=alt.Scale(type="log", domain=[lo, hi], nice=False),
        title="arithmetic intensity (FLOPs / byte, bytes estimated)",
        axis=alt.Axis(format="~s"),
    )
    # Half a decade of room below and above every point and roof, so a point's label (12 px
    # below it) never lands on the axis's tick labels.
    ys = [p["achieved_flops_per_s"] for p in placed] + [r["flops_per_s"] for r in roofs]
    y_domain = [min(ys) / 3, max(ys) * 3] if ys else alt.Undefined
    y = alt.Y(
        "flops_per_s:Q",
        scale=alt.Scale(type="log", domain=y_domain, nice=False),
        title="FLOP/s",
        axis=alt.Axis(format="~s"),
    )
    layers = []
    if roofs:
        layers.append(
            alt.Chart(alt.Data(values=roofs))
            .mark_line(color="black")
            .encode(
                x=x,
                y=y,
                strokeDash=alt.StrokeDash(
                    "roof:N",
                    title="roof",
                    scale=alt.Scale(
                        domain=sorted({r["roof"] for r in roofs}, reverse=True),
                        range=[[1, 0], [6, 4]][: len({r["roof"] for r in roofs})],
                    ),
                ),
            )
        )
    values = [
        {
            "category": p["category"],
            "intensity": p["intensity"],
            "flops_per_s": p["achieved_flops_per_s"],
            "label": f"{p['category']} (est.)",
            "align": "right" if p["category"] == "matmul" else "left",
            "kernel_ms": 1e3 * p["kernel_time_s"],
        }
        for p in placed
    ]
    colours = {c: TRACE_COLOURS[c] for c in ("matmul", "attention")}
    point_base = alt.Chart(alt.Data(values=values)).encode(x=x, y=y)
    layers.append(
        point_base.mark_point(filled=True, size=120).encode(
            color=alt.Color(
                "category:N",
                scale=alt.Scale(domain=list(colours), range=list(colours.values())),
                title="kernel category",
            ),
            tooltip=[
                "category:N",
                alt.Tooltip("intensity:Q", format=".3~s"),
                alt.Tooltip("flops_per_s:Q", format=".3~s"),
                alt.Tooltip("kernel_ms:Q", format=".3f"),
            ],
        )
    )
    for align, dx, dy in (("right", -10, 12), ("left", 10, 12)):  # matmul left, others right
        layers.append(
            point_base.transform_filter(f"datum.align == '{align}'")
            .mark_text(align=align, dx=dx, dy=dy, fontSize=11)
            .encode(text="label:N")
        )
    device = hardware["device"] if hardware else report.get("device")
    subtitle = [
        f"{device}; roof: measured matmul {hardware['matmul_flops_per_s']:.3g} FLOP/s, "
        f"copy {hardware['copy_bytes_per_s']:.3g} B/s (read + write)"
        if hardware
        else f"{device}; no hardware ceilings given",
        "points: counted FLOPs / kernel time; x uses estimated bytes (ideal traffic: each operand "
        "read once), an upper bound",
        "not placed (no FLOP count): norm/elementwise, memory copies, communication",
    ]
    chart = alt.layer(*layers).properties(
        width=520,
        height=340,
        title=alt.TitleParams(f"Roofline: {report['run_id']}", subtitle=subtitle, anchor="start"),
    )
    return save_chart(chart, path)
