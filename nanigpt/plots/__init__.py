"""Figures of the study (Altair, saved as SVG): every chart is a file the graph can rebuild.

Serves every core question that ends in a figure; the headline is `moe_vs_dense` (core question 4,
how do dense and MoE scale?). Charts are written atomically: rendered to a temporary `.svg` beside
the target (vl-convert picks the format from the suffix), then renamed onto it.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

import altair as alt
import polars as pl

from nanigpt.io import atomic_path

# One colour per architecture, the same in every figure.
ARCH_COLOURS = {"dense": "#1f77b4", "moe": "#d62728"}
_FALLBACK_COLOURS = ["#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def arch_colour_scale(arch_kinds: list[str]) -> alt.Scale:
    """A colour scale that gives dense and MoE the same colours in every chart."""
    domain = sorted(arch_kinds)
    extra = iter(_FALLBACK_COLOURS)
    return alt.Scale(domain=domain, range=[ARCH_COLOURS.get(a) or next(extra) for a in domain])


def log_ticks(values: list[float], max_ticks: int = 6) -> list[float]:
    """Tick values for a log axis over `values` that cannot crowd each other: the powers of ten
    inside the range, or 1-2-5 (then 1-3) steps when it spans too few decades for that to give two
    ticks, thinned to at most `max_ticks`. Vega's own log ticks label every 1..9 x 10^k and run
    together ("3e+104e+10")."""
    finite = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if not finite:
        return []
    lo, hi = min(finite), max(finite)
    for mantissas in ((1,), (1, 2, 5), (1, 3), (1, 1.5, 2, 3, 5, 7)):
        ticks = [
            m * 10.0**k
            for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
            for m in mantissas
            if lo <= m * 10.0**k <= hi * (1 + 1e-9)
        ]
        if len(ticks) >= 2:
            break
    step = max(1, math.ceil(len(ticks) / max_ticks))
    return ticks[::step] or [lo, hi]


def log_axis(values: list[float], title: str | None = None, number_format: str = "~s") -> alt.Axis:
    """A log axis with `log_ticks` and labels that are dropped rather than overlapped. Without a
    `title` the encoding's own title stands (`alt.Axis(title=None)` would remove it)."""
    return alt.Axis(
        values=log_ticks(values),
        format=number_format,
        labelOverlap="greedy",
        title=alt.Undefined if title is None else title,
    )


# Fonts with Arial's metrics, which vl-convert measures text with (its bundled Liberation Sans):
# a viewer that draws the SVG in one of them sees text exactly where the layout put it (a wider
# fallback such as DejaVu Sans, 15% wider, would run legends off the canvas).
FONT = "Liberation Sans, Arial, Helvetica, sans-serif"


def save_chart(chart: alt.TopLevelMixin, path: str | os.PathLike) -> Path:
    """Render `chart` with vl-convert to `path` (format from its suffix), atomically, in `FONT`.
    An SVG's text is then checked (nanigpt.plots.layout_check): text off the canvas or over other
    text is reported on stderr."""
    path = Path(path)
    with atomic_path(path, keep_suffix=True) as tmp:
        chart.configure(font=FONT).save(str(tmp))
        if path.suffix == ".svg":
            from nanigpt.plots.layout_check import problems

            for line in problems(Path(tmp).read_text()):
                print(f"warning: {path}: {line}", file=sys.stderr)
    return path


# What a chart CLI reports as bad input (a missing or malformed file), one line and exit code 2.
CLI_INPUT_ERRORS = (FileNotFoundError, KeyError, ValueError, pl.exceptions.PolarsError)


def save_from_cli(build: Callable[[], alt.TopLevelMixin], out: str | os.PathLike) -> int:
    """Build a chart from a CLI's inputs and save it; bad input gets a clear error and exit 2."""
    try:
        chart = build()
    except CLI_INPUT_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    save_chart(chart, out)
    print(f"wrote {out}")
    return 0
