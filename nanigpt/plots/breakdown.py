"""Step-time and memory breakdown charts: where do the time and the memory of a step go? (question 1)

`step_breakdown_chart`: one run, two stacked bars normalised to 100%: the step phases (median
seconds over steady steps, `nanigpt.analysis.report`) and the kernel categories of the profiled window
(`nanigpt.analysis.trace_analysis`, idle included). `runs_breakdown_chart`: the same two views, one bar
per run, for a sweep. `memory_chart`: the predicted footprint by component (`nanigpt.analysis.memory`)
beside the measured peak. Colours are fixed per category, the same in every chart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import altair as alt

from nanigpt.plots import save_chart

PHASE_COLOURS = {
    "data": "#8c564b",
    "forward": "#1f77b4",
    "backward": "#ff7f0e",
    "optimizer": "#2ca02c",
    "comm": "#d62728",
    "communication": "#d62728",
    "other": "#c7c7c7",
}
TRACE_COLOURS = {
    "matmul": "#1f77b4",
    "attention": "#9467bd",
    "norm_elementwise": "#2ca02c",
    "communication": "#d62728",
    "memory_copy": "#8c564b",
    "other": "#bcbd22",
    "idle": "#c7c7c7",
}
MEMORY_COLOURS = {
    "parameters": "#1f77b4",
    "gradients": "#ff7f0e",
    "optimizer states": "#2ca02c",
    "bf16 weight copies": "#17becf",
    "activations (blocks)": "#9467bd",
    "activations (head)": "#e377c2",
    "logits + loss": "#d62728",
    "measured peak": "#7f7f7f",
}
WIDTH = 560


def _scale(colours: dict[str, str], present: list[str]) -> alt.Scale:
    domain = [c for c in colours if c in present] + [c for c in present if c not in colours]
    extra = iter(["#17becf", "#e377c2", "#7f7f7f", "#aec7e8", "#ffbb78"])
    return alt.Scale(domain=domain, range=[colours.get(c) or next(extra) for c in domain])


def _stacked(rows: list[dict[str, Any]], y: str, y_title: str, colours: dict, title: str):
    present = list(dict.fromkeys(r["category"] for r in rows))
    order = {c: i for i, c in enumerate(_scale(colours, present).domain)}
    values = [
        {**r, "order": order[r["category"]], "ms": 1e3 * (r["seconds_per_step"] or 0.0)}
        for r in rows
        if r.get("share") is not None
    ]
    base = alt.Chart(alt.Data(values=values)).encode(
        y=alt.Y(f"{y}:N", title=y_title, sort=None),
        x=alt.X("share:Q", stack="normalize", title="share", axis=alt.Axis(format="%")),
        order=alt.Order("order:Q"),
    )
    bars = base.mark_bar().encode(
        color=alt.Color("category:N", scale=_scale(colours, present), title=title),
        tooltip=[
            "category:N",
            alt.Tooltip("ms:Q", format=".3f"),
            alt.Tooltip("share:Q", format=".1%"),
        ],
    )
    labels = (
        base.transform_filter("datum.share >= 0.07")
        .transform_calculate(label="format(datum.share, '.0%')")
        .mark_text(color="white", fontSize=10, dx=0)
        .encode(x=alt.X("share:Q", stack="normalize", bandPosition=0.5), text="label:N")
    )
    return alt.layer(bars, labels).properties(width=WIDTH)


def step_breakdown_chart(
    rows: list[dict[str, Any]], report: dict[str, Any], path: str | Path
) -> Path:
    """Two bars for one run: step phases and the trace's kernel categories."""
    phases = report["phases"]
    trace = report["trace"]
    phase_rows = [{**r, "bar": "step phases"} for r in rows if r["section"] == "phase"]
    trace_rows = [{**r, "bar": "profiled kernels"} for r in rows if r["section"] == "trace"]
    step_ms = phases["step_time_s_median"] * 1e3
    window_ms = trace["window_s"] * 1e3 / max(trace["steps"], 1)
    top = _stacked(phase_rows, "bar", None, PHASE_COLOURS, "step phase").properties(
        height=40,
        title=f"step phases: {phases['steady_steps']} steady steps, median {step_ms:.2f} ms/step",
    )
    unit = "kernels on the GPU streams" if trace["mode"] == "gpu" else "CPU ops (self time)"
    bottom = _stacked(trace_rows, "bar", None, TRACE_COLOURS, "kernel category").properties(
        height=40,
        title=f"profiled window ({trace['steps']} steps, {window_ms:.2f} ms/step with profiler on): {unit}",
    )
    mfu = report.get("mfu_datasheet")
    mfu_m = report.get("mfu_measured")
    subtitle = [
        f"{report['device']}; {report.get('tokens_per_s') or 0:,.0f} tokens/s; "
        f"MFU {'n/a (no datasheet peak)' if mfu is None else f'{mfu:.1%} of datasheet'}, "
        f"{'n/a' if mfu_m is None else f'{mfu_m:.1%}'} of the measured matmul ceiling",
    ]
    if trace.get("comm_overlap_frac") is not None:
        subtitle.append(f"communication overlapped with compute: {trace['comm_overlap_frac']:.0%}")
    chart = (
        alt.vconcat(top, bottom)
        .resolve_scale(color="independent")
        .properties(
            title=alt.TitleParams(
                f"Where the step time goes: {report['run_id']}", subtitle=subtitle, anchor="start"
            )
        )
    )
    return save_chart(chart, path)


def runs_breakdown_chart(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """One bar per run: phases (top) and kernel categories (bottom), each normalised to 100%."""
    phase_rows = [r for r in rows if r["section"] == "phase"]
    trace_rows = [r for r in rows if r["section"] == "trace"]
    n_runs = len({r["run_id"] for r in rows})
    height = max(40, 22 * n_runs)
    top = _stacked(phase_rows, "run_id", "run", PHASE_COLOURS, "step phase").properties(
        height=height, title="step phases (share of step time over steady steps)"
    )
    bottom = _stacked(trace_rows, "run_id", "run", TRACE_COLOURS, "kernel category").properties(
        height=height, title="profiled window by kernel category (idle = not covered)"
    )
    chart = (
        alt.vconcat(top, bottom)
        .resolve_scale(color="independent")
        .properties(title=alt.TitleParams("Where the step time goes, per run", anchor="start"))
    )
    return save_chart(chart, path)


def memory_chart(mem: dict[str, Any], report: dict[str, Any], path: str | Path) -> Path:
    """Predicted bytes by component (stacked) beside the measured peak."""
    p = mem["predicted"]
    blocks = sum(r["bytes"] for r in p["activations_by_layer"] if r["kind"] in ("dense", "moe"))
    head = sum(r["bytes"] for r in p["activations_by_layer"] if r["kind"] == "head")
    parts = {
        "parameters": p["params_bytes"],
        "gradients": p["grads_bytes"],
        "optimizer states": p["optimizer_bytes"],
        "bf16 weight copies": p["weight_copies_bytes"],
        "activations (blocks)": blocks,
        "activations (head)": head,
        "logits + loss": p["logits_bytes"],
    }
    values = [
        {"bar": "predicted", "component": k, "MiB": v / 2**20, "order": i}
        for i, (k, v) in enumerate(parts.items())
        if v
    ]
    measured = mem.get("measured_peak_bytes")
    predicted_total = sum(parts.values())
    ratio = measured / predicted_total if measured and predicted_total else None
    subtitle = [
        f"{p['compute_dtype']}, {p['strategy']}, local batch {p['local_batch']} x {p['seq_len']}; "
        f"predicted {predicted_total / 2**20:,.1f} MiB (all parts summed: an upper bound)",
    ]
    if measured and ratio is not None and 0.2 <= ratio <= 5:
        values.append(
            {
                "bar": "measured peak",
                "component": "measured peak",
                "MiB": measured / 2**20,
                "order": 99,
            }
        )
        subtitle.append(
            f"measured: {mem['measured_what']}, {measured / 2**20:,.1f} MiB ({ratio:.2f}x)"
        )
    elif measured:
        subtitle.append(
            f"measured peak {measured / 2**20:,.1f} MiB ({ratio:.1f}x, not drawn to this scale): "
            f"{mem['measured_what']}"
        )
    present = [v["component"] for v in values]
    chart = (
        alt.Chart(alt.Data(values=values))
        .mark_bar()
        .encode(
            y=alt.Y("bar:N", title=None, sort=["predicted", "measured peak"]),
            x=alt.X("MiB:Q", stack="zero", title="MiB per rank"),
            color=alt.Color(
                "component:N", scale=_scale(MEMORY_COLOURS, present), title="component"
            ),
            order=alt.Order("order:Q"),
            tooltip=["component:N", alt.Tooltip("MiB:Q", format=".2f")],
        )
        .properties(
            width=WIDTH,
            height=40 * len({v["bar"] for v in values}),
            title=alt.TitleParams(
                f"Memory: predicted footprint vs measured peak, {report['run_id']}",
                subtitle=subtitle,
                anchor="start",
            ),
        )
    )
    return save_chart(chart, path)
