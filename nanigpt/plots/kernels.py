"""The kernel benchmark's figure: how close is each kernel to its ceiling? (core question 6)

Left: per kernel (rows) and direction (columns), each implementation's fraction of its ceiling,
measured copy bandwidth for the memory-bound kernels (minimal bytes over time), measured matmul
FLOP/s for the fused cross-entropy. Right: the same rows on the roofline (Williams, Waterman &
Patterson 2009), min(matmul FLOP/s, intensity x copy bandwidth) from the ceilings the benchmark
used; the elementwise kernels' FLOPs are approximate counts, so their x is too. The fused
cross-entropy is drawn for fwd_bwd only (its gradients are computed in its forward). Triton rows run in
the interpreter on the CPU are titled so: those times say nothing about speed.

Drawn by `python -m nanigpt.kernels.bench` beside its JSON, or from a JSON with `--chart-from`.
"""

from __future__ import annotations

import math
from typing import Any

import altair as alt

from nanigpt.plots.roofline import roof_rows

IMPL_COLOURS = {"eager": "#7f7f7f", "compiled": "#1f77b4", "triton": "#d62728", "liger": "#2ca02c"}


def _colour() -> alt.Color:
    return alt.Color("impl:N", title="implementation",
                     scale=alt.Scale(domain=list(IMPL_COLOURS), range=list(IMPL_COLOURS.values())))  # fmt: skip


def fraction_chart(rows: list[dict[str, Any]]) -> alt.FacetChart:
    return (
        alt.Chart(alt.Data(values=rows))
        .mark_bar()
        .encode(
            y=alt.Y("label:N", title=None),
            x=alt.X(
                "ceiling_fraction:Q",
                title="fraction of measured ceiling",
                scale=alt.Scale(domain=[0, 1], clamp=True),
            ),  # fmt: skip
            color=_colour(),
            tooltip=[
                "kernel:N",
                "case:N",
                "impl:N",
                "direction:N",
                "ceiling:N",
                alt.Tooltip("ceiling_fraction:Q", format=".2f"),
                alt.Tooltip("gb_per_s:Q", format=".1f"),
                alt.Tooltip("time_s:Q", format=".2e"),
                alt.Tooltip("rel_err:Q", format=".1e"),
            ],  # fmt: skip
        )
        .properties(width=200, height=alt.Step(10))
        .facet(
            row=alt.Row("kernel:N", title=None, header=alt.Header(labelAngle=0, labelAlign="left")),
            column=alt.Column("direction:N", title=None, sort=["fwd", "bwd", "fwd_bwd"]),
        )
        .resolve_scale(y="independent")
    )


def roofline_layer(rows: list[dict[str, Any]], meta: dict[str, Any]) -> alt.LayerChart:
    xs = [r["intensity"] for r in rows] + [meta["matmul_flops_per_s"] / meta["copy_bytes_per_s"]]
    lo = 10 ** math.floor(math.log10(min(xs) / 3))
    hi = 10 ** math.ceil(math.log10(max(xs) * 3))
    roofs = roof_rows(meta["matmul_flops_per_s"], meta["copy_bytes_per_s"], lo, hi, "measured")
    points = [{**r, "flops_per_s": r["tflop_per_s"] * 1e12} for r in rows]
    x = alt.X("intensity:Q", scale=alt.Scale(type="log", domain=[lo, hi], nice=False),
              title="arithmetic intensity (FLOPs / minimal byte)", axis=alt.Axis(format="~s"))  # fmt: skip
    y = alt.Y("flops_per_s:Q", scale=alt.Scale(type="log"), title="FLOP/s",
              axis=alt.Axis(format="~s"))  # fmt: skip
    roof = alt.Chart(alt.Data(values=roofs)).mark_line(color="black").encode(x=x, y=y)
    dots = (
        alt.Chart(alt.Data(values=points))
        .mark_point(filled=True, size=50)
        .encode(
            x=x,
            y=y,
            color=_colour(),
            shape=alt.Shape("kernel:N", title="kernel"),
            tooltip=["kernel:N", "case:N", "impl:N", "direction:N"],
        )  # fmt: skip
    )
    return alt.layer(roof, dots).properties(width=320, height=320, title="roofline (measured)")


def build_chart(result: dict[str, Any]) -> alt.VConcatChart:
    meta = result["meta"]
    rows = [r for r in result["rows"] if r.get("status") == "ok" and r.get("time_s")]
    rows = [r for r in rows if r["impl"] != "triton_sweep"]  # launch settings: in the JSON only
    if not rows:
        raise ValueError(
            "the kernel bench has no timed rows (every implementation skipped or failed)"
        )
    for r in rows:
        r["label"] = f"{r['case']} {r['impl']}"
    # The fused cross-entropy finishes its gradients in the forward: only fwd_bwd compares.
    rows = [r for r in rows if r["kernel"] != "cross_entropy" or r["direction"] == "fwd_bwd"]
    title = f"Kernels on {meta['device']} ({meta['dtype']}, preset {meta['preset']})"
    if meta.get("triton_interpret"):
        title += ": Triton rows in the interpreter, times not meaningful"
    return alt.hconcat(fraction_chart(rows), roofline_layer(rows, meta)).properties(title=title)
