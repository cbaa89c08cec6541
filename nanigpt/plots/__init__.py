"""Figures of the study (Altair, saved as SVG): every chart is a file the graph can rebuild.

Serves every core question that ends in a figure; the headline is `moe_vs_dense` (core question 4,
how do dense and MoE scale?). Charts are written atomically: rendered to a temporary `.svg` beside
the target (vl-convert picks the format from the suffix), then renamed onto it.
"""

from __future__ import annotations

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


def save_chart(chart: alt.TopLevelMixin, path: str | os.PathLike) -> Path:
    """Render `chart` with vl-convert to `path` (format from its suffix), atomically."""
    path = Path(path)
    with atomic_path(path, keep_suffix=True) as tmp:
        chart.save(str(tmp))
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
