"""Fitted against observed loss, one point per run: does the scaling law describe the runs at all?

Serves core question 4 (what do scaling laws feel like in practice?): the frontier of the headline
figure is only as good as the fit beneath it. Each run's observed loss is plotted against the loss
the fitted law L(N, D) = E + A/N^alpha + B/D^beta (Chinchilla approach 3, Hoffmann et al. 2022)
predicts for its N and D, coloured by architecture, with the line y = x; architectures whose fit
was refused are listed in the subtitle.

CLI: `python -m nanigpt.plots.fit_residuals --runs runs.parquet --fits fits.json --out residuals.svg`
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import altair as alt
import polars as pl

from nanigpt.io import read_json
from nanigpt.plots import arch_colour_scale, save_from_cli
from nanigpt.scaling.fit import LOSS_UNITS, LawParams

TITLE = "Scaling-law fit: predicted against observed loss"


def residual_rows(runs: pl.DataFrame, fits: dict[str, Any]) -> tuple[list[dict], list[str]]:
    rows, notes = [], []
    for arch_kind, entry in sorted(fits.items()):
        if "error" in entry:
            notes.append(f"{arch_kind}: fit refused: {entry['error'][:100]}")
            continue
        law = LawParams(*(entry[k] for k in ("E", "A", "B", "alpha", "beta")))
        subset = runs.filter(pl.col("arch_kind") == arch_kind)
        predicted = law.loss(
            subset[entry["n_column"]].to_numpy().astype(float),
            subset["tokens_trained"].to_numpy().astype(float),
        )
        for run_id, observed, fitted in zip(
            subset["run_id"], subset[entry["loss_column"]], predicted, strict=True
        ):
            rows.append(
                {
                    "run_id": run_id,
                    "arch_kind": arch_kind,
                    "observed": observed,
                    "predicted": float(fitted),
                }
            )
        notes.append(f"{arch_kind}: rms log residual {entry['rms_log_residual']:.3g}")
    return rows, notes


def build_chart(runs: pl.DataFrame, fits: dict[str, Any]) -> alt.LayerChart:
    rows, notes = residual_rows(runs, fits)
    loss_column = next((e["loss_column"] for e in fits.values() if "loss_column" in e), "")
    unit = LOSS_UNITS.get(loss_column, "")
    values = [r["observed"] for r in rows] + [r["predicted"] for r in rows] or [0.0, 1.0]
    lo, hi = min(values), max(values)
    pad = 0.05 * (hi - lo) or 0.1
    scale = alt.Scale(domain=[lo - pad, hi + pad], zero=False, nice=False)
    arch_kinds = sorted(fits)
    points = (
        alt.Chart(alt.Data(values=rows))
        .mark_point(filled=True, size=70)
        .encode(
            x=alt.X("predicted:Q", title=f"fitted loss ({unit})", scale=scale),
            y=alt.Y("observed:Q", title=f"observed loss ({unit})", scale=scale),
            color=alt.Color(
                "arch_kind:N", title="architecture", scale=arch_colour_scale(arch_kinds)
            ),
            tooltip=["run_id:N", "observed:Q", "predicted:Q"],
        )
    )
    diagonal = (
        alt.Chart(alt.Data(values=[{"v": lo - pad}, {"v": hi + pad}]))
        .mark_line(color="gray", strokeDash=[4, 4])
        .encode(x=alt.X("v:Q", scale=scale), y=alt.Y("v:Q", scale=scale))
    )
    return alt.layer(diagonal, points).properties(
        width=420,
        height=420,
        title=alt.TitleParams(TITLE, subtitle=["dashed: y = x", *notes], anchor="start"),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.plots.fit_residuals", description=TITLE
    )
    parser.add_argument("--runs", required=True)
    parser.add_argument("--fits", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    def build() -> alt.Chart:
        if not Path(args.runs).is_file():
            raise FileNotFoundError(f"runs table not found: {args.runs}")
        return build_chart(pl.read_parquet(args.runs), read_json(args.fits, "fits"))

    return save_from_cli(build, args.out)


if __name__ == "__main__":
    sys.exit(main())
