"""The Rust track's scoreboard: throughput of each implementation, Python vs Rust vs libraries.

Serves the Rust track ("implement in Python first, profile, rewrite in Rust, measure the delta"):
one bar per implementation for BPE training, encoding and batch loading, on each dataset, drawn
from the long table `python -m nanigpt.bench.tokenizer` writes (results/rust/tokenizer.parquet);
beside it the checkpoint stall (`checkpoint_chart`), the trace breakdown's throughput
(`trace_chart`) and the verdict's gains (`verdict_chart`), which the benchmarks' CLIs draw.

CLI: python -m nanigpt.plots.rust_bench --bench results/rust/tokenizer.parquet --out results/rust/tokenizer.svg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import altair as alt
import polars as pl

from nanigpt.plots import save_from_cli


def throughput_table(bench: pl.DataFrame) -> pl.DataFrame:
    """One row per (dataset, measure, implementation, threads) with its MB/s."""
    rows = bench.filter(pl.col("mb_per_s").is_not_null() & pl.col("measure").is_not_null())
    if "corpus" in rows.columns:  # the Rust-on-the-Python-prefix row is for the ratio only
        rows = rows.filter(pl.col("corpus").is_null() | (pl.col("corpus") != "prefix"))
    return rows.with_columns(
        (pl.col("impl") + " (" + pl.col("threads").cast(pl.Utf8) + " thr)").alias("implementation")
    ).select("dataset", "measure", "implementation", "impl", "mb_per_s")


def build_chart(bench: pl.DataFrame) -> alt.Chart:
    table = throughput_table(bench)
    if table.is_empty():
        raise ValueError("the benchmark table has no throughput rows (mb_per_s)")
    return (
        alt.Chart(alt.Data(values=table.to_dicts()))
        .mark_bar()
        .encode(
            y=alt.Y("implementation:N", title=None, sort="-x"),
            # Linear, scaled per panel: the panels differ by orders of magnitude.
            x=alt.X("mb_per_s:Q", title="throughput (MB of text per second)"),
            color=alt.Color("impl:N", title="implementation"),
            tooltip=[
                "dataset:N",
                "measure:N",
                "implementation:N",
                alt.Tooltip("mb_per_s:Q", format=".2f"),
            ],
        )
        .properties(width=320, height=120)
        .facet(row=alt.Row("measure:N", title=None), column=alt.Column("dataset:N"))
        .resolve_scale(x="independent", y="independent")
        .properties(title="Rust track: Python reference vs Rust vs libraries (same vocabulary)")
    )


# The other tables of the Rust track (nanigpt.bench.checkpoint, .trace, .verdict draw these).


def checkpoint_chart(summary: pl.DataFrame) -> alt.FacetChart:
    """Blocked and durable seconds against state size, one panel each, one line per method."""

    data = summary.with_columns((pl.col("state_bytes") / 1e6).alias("MB")).unpivot(
        index=["MB", "method"],
        on=["blocked_median_s", "durable_median_s"],
        variable_name="what",
        value_name="seconds",
    )
    base = alt.Chart(alt.Data(values=data.to_dicts())).encode(
        x=alt.X("MB:Q", scale=alt.Scale(type="log"), title="state dict (MB)"),
        y=alt.Y("seconds:Q", scale=alt.Scale(type="log"), title="seconds (median of repeats)"),
        color="method:N",
    )
    return (
        (base.mark_line() + base.mark_point())
        .properties(width=260, height=220)
        .facet(column=alt.Column("what:N", title=None))
        .properties(title="Checkpoint: time the loop is blocked, and time until durable")
    )


def trace_chart(df: pl.DataFrame) -> alt.LayerChart:
    """Throughput (MB/s, median of repeats) against trace size, one line per method."""

    data = (
        df.filter(pl.col("seconds").is_not_null())
        .group_by("json_bytes", "method")
        .agg(pl.col("mb_per_s").median())
        .with_columns((pl.col("json_bytes") / 1e6).alias("MB"))
        .sort("MB", "method")
    )
    base = alt.Chart(alt.Data(values=data.to_dicts())).encode(
        x=alt.X("MB:Q", scale=alt.Scale(type="log"), title="trace JSON (MB, uncompressed)"),
        y=alt.Y("mb_per_s:Q", scale=alt.Scale(type="log"), title="MB/s (median of repeats)"),
        color="method:N",
    )
    return (base.mark_line() + base.mark_point()).properties(
        width=320, height=220, title="Trace step breakdown throughput"
    )


def verdict_chart(df: pl.DataFrame) -> alt.LayerChart:
    """Rust's gain over the Python reference per stage: a bar from 1x to the gain on a log axis,
    its value at the end, and the 2x line the verdict reads as "significant"."""
    data = df.filter(pl.col("rust_vs_python").is_not_null()).select("stage", "rust_vs_python")
    rows = [{**r, "label": f"{r['rust_vs_python']:.3g}x"} for r in data.to_dicts()]
    gains = [r["rust_vs_python"] for r in rows] + [1.0, 2.0]
    scale = alt.Scale(type="log", domain=[min(gains) / 1.5, max(gains) * 3], nice=False)
    x = alt.X("rust_vs_python:Q", scale=scale, title="Rust vs Python (times faster, log scale)")
    y = alt.Y("stage:N", title=None, sort=list(dict.fromkeys(r["stage"] for r in rows)))
    base = alt.Chart(alt.Data(values=rows))
    bars = base.mark_bar().encode(x=x, x2=alt.datum(1.0), y=y)
    values = base.mark_text(align="left", dx=4, fontSize=11).encode(x=x, y=y, text="label:N")
    rule = (
        alt.Chart(alt.Data(values=[{"rust_vs_python": 2.0}]))
        .mark_rule(strokeDash=[4, 4])
        .encode(x=x)
    )
    return alt.layer(bars, values, rule).properties(
        width=360,
        height=32 * max(len(rows), 1),
        title=alt.TitleParams(
            "The Rust track: gain over the Python reference",
            subtitle=[
                "dashed: 2x, read as a significant difference",
                "measured tables only; a stage without both numbers has no bar",
            ],
            anchor="start",
        ),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)

    def build() -> alt.FacetChart:
        if not args.bench.exists():
            raise FileNotFoundError(f"benchmark table not found: {args.bench}")
        return build_chart(pl.read_parquet(args.bench))

    return save_from_cli(build, args.out)


if __name__ == "__main__":
    sys.exit(main())
