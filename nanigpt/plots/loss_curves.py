"""Loss curves of every run of a sweep: how each run got to the final loss the scaling fits use.

Serves core question 4 (what do scaling laws feel like in practice?): a scaling fit sees one number
per run, its final validation loss; the curves show whether that number is a converged run, one
still falling steeply, or a run hurt by a short schedule. One panel per architecture of the sweep,
one line per run (training loss, nats/token, smoothed by a trailing mean over 5% of the run's
steps), coloured by model size, with the validation losses the trainer measured as points, against
counted training FLOPs (log x; `--x tokens` for tokens seen). Where the data's entropy floor is
known, a dashed line marks it, converted from bits/byte to nats/token with the validation shard's
bytes per token (val_loss / val_bpb of the same evaluation).

Input: run folders `results/runs/{run_id}/` with `summary.json` and `metrics.parquet` (written by
`nanigpt.train`; docs/interfaces.md).

CLI: `python -m nanigpt.plots.loss_curves --out results/scaling/loss_curves_SWEEP.svg
[--x flops|tokens] [--title TEXT] RUN_DIR...`
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
from nanigpt.plots import log_axis, save_from_cli

TITLE = "Training and validation loss of every run"
SMOOTH_FRAC = 0.05  # trailing-mean window of the training loss, as a fraction of the run's steps
MAX_POINTS_PER_RUN = 200  # the smoothed curve is thinned to about this many points
METRIC_COLUMNS = ("step", "tokens", "flops", "loss", "val_loss", "val_bpb")
X_AXES = {
    "flops": "training compute (FLOPs, counted, log scale)",
    "tokens": "tokens seen (log scale)",
}


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], pl.DataFrame]:
    """A run's summary and the metric columns the figure uses; errors name the file."""
    run_dir = Path(run_dir)
    summary = read_json(run_dir / "summary.json", "run summary")
    for key in ("run_id", "arch", "size"):
        if key not in summary:
            raise KeyError(f"{run_dir / 'summary.json'} has no {key!r}")
    path = run_dir / "metrics.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"metrics not found: {path}")
    metrics = pl.read_parquet(path)
    missing = [c for c in METRIC_COLUMNS if c not in metrics.columns]
    if missing:
        raise KeyError(f"{path} lacks column(s) {missing}")
    if metrics.height == 0:
        raise ValueError(f"{path} has no rows")
    return summary, metrics.select(METRIC_COLUMNS).sort("step")


def run_rows(summary: dict[str, Any], metrics: pl.DataFrame, x: str) -> tuple[list, list]:
    """(smoothed training-loss samples, validation points) of one run."""
    window = max(1, round(SMOOTH_FRAC * metrics.height))
    smoothed = metrics.with_columns(
        pl.col("loss").rolling_mean(window_size=window, min_samples=1).alias("train_loss")
    )
    stride = max(1, math.ceil(smoothed.height / MAX_POINTS_PER_RUN))
    keep = smoothed.with_row_index("i").filter(
        (pl.col("i") % stride == 0) | (pl.col("i") == smoothed.height - 1)
    )
    label = {
        "run": summary["run_id"],
        "arch": summary["arch"],
        "size": summary["size"],
        "params": summary.get("params_non_embedding_active"),
    }
    train = [
        {**label, "x": row[x], "loss": row["train_loss"]}
        for row in keep.iter_rows(named=True)
        if row[x] and row["train_loss"] is not None and math.isfinite(row["train_loss"])
    ]
    val = [
        {**label, "x": row[x], "loss": row["val_loss"], "val_bpb": row["val_bpb"]}
        for row in metrics.filter(pl.col("val_loss").is_not_null()).iter_rows(named=True)
        if row[x]
    ]
    return train, val


def floor_nats(summary: dict[str, Any], metrics: pl.DataFrame) -> float | None:
    """The entropy floor in nats/token of the validation shard (None where unknown)."""
    floor_bpb = summary.get("floor_bpb")
    evals = metrics.filter(pl.col("val_loss").is_not_null() & (pl.col("val_bpb") > 0))
    if floor_bpb is None or evals.height == 0:
        return None
    last = evals.row(-1, named=True)
    return floor_bpb * last["val_loss"] / last["val_bpb"]


def build_chart(run_dirs: Sequence[str | Path], x: str = "flops", title: str = TITLE) -> alt.Chart:
    if not run_dirs:
        raise ValueError("no run folders given")
    if x not in X_AXES:
        raise ValueError(f"--x must be one of {sorted(X_AXES)}, got {x!r}")
    train, val, floors, sizes = [], [], {}, {}
    for run_dir in run_dirs:
        summary, metrics = load_run(run_dir)
        run_train, run_val = run_rows(summary, metrics, x)
        train += run_train
        val += run_val
        floor = floor_nats(summary, metrics)
        if floor is not None:
            floors.setdefault(summary["arch"], floor)
        sizes.setdefault(summary["size"], summary.get("params_non_embedding_active") or 0)
    size_order = sorted(sizes, key=lambda s: (sizes[s], s))
    archs = sorted({row["arch"] for row in train + val})
    losses = [r["loss"] for r in train + val] + list(floors.values())
    lo, hi = min(losses), max(losses)
    pad = 0.04 * (hi - lo) or 0.1
    y = alt.Y(
        "loss:Q",
        title="loss (nats/token)",
        scale=alt.Scale(domain=[lo - pad, hi + pad], zero=False, nice=False),
    )
    xs = [r["x"] for r in train + val]
    x_enc = alt.X(
        "x:Q",
        title=X_AXES[x],
        scale=alt.Scale(type="log", domain=[min(xs), max(xs)], nice=False),
        axis=log_axis(xs, number_format="~e" if x == "flops" else "~s"),
    )
    colour = alt.Color(
        "size:N",
        title="model size (small to large)",
        sort=size_order,
        scale=alt.Scale(domain=size_order, scheme="viridis"),
    )
    tooltip = ["run:N", "size:N", "x:Q", "loss:Q"]
    panels = []
    for arch in archs:
        layers = [
            alt.Chart(alt.Data(values=[r for r in train if r["arch"] == arch]))
            .mark_line(strokeWidth=1.3, opacity=0.85)
            .encode(x=x_enc, y=y, color=colour, detail="run:N", tooltip=tooltip),
            alt.Chart(alt.Data(values=[r for r in val if r["arch"] == arch]))
            .mark_point(filled=True, size=28, stroke="black", strokeWidth=0.4)
            .encode(x=x_enc, y=y, color=colour, tooltip=[*tooltip, "val_bpb:Q"]),
        ]
        if arch in floors:
            layers.append(
                alt.Chart(alt.Data(values=[{"loss": floors[arch]}]))
                .mark_rule(color="black", strokeDash=[6, 4])
                .encode(y=y)
            )
        panels.append(alt.layer(*layers).properties(width=460, height=300, title=f"arch {arch}"))
    subtitle = [
        f"lines: training loss (trailing mean over {SMOOTH_FRAC:.0%} of each run's steps); "
        "points: validation loss; one line per run",
    ]
    if floors:
        subtitle.append("dashed: the data's entropy floor (converted to nats/token)")
    return (
        alt.hconcat(*panels)
        .resolve_scale(y="shared")
        .properties(title=alt.TitleParams(title, subtitle=subtitle, anchor="start"))
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.plots.loss_curves",
        description=TITLE,
        fromfile_prefix_chars="@",  # `@LIST`: a file of arguments, one a line
    )
    parser.add_argument("--out", required=True, help="figure to write (.svg, .png, .html)")
    parser.add_argument("--x", default="flops", choices=sorted(X_AXES), help="the x axis")
    parser.add_argument("--title", default=TITLE)
    parser.add_argument("run_dirs", nargs="+", help="results/runs/{run_id} folders (or @LIST)")
    args = parser.parse_args(argv)
    return save_from_cli(lambda: build_chart(args.run_dirs, args.x, args.title), args.out)


if __name__ == "__main__":
    sys.exit(main())
