"""The Rust track's scoreboard: throughput of each implementation, Python vs Rust vs libraries.

Serves the Rust track ("implement in Python first, profile, rewrite in Rust, measure the delta"):
one bar per implementation for BPE training, encoding and batch loading, on each dataset, drawn
from the long table `python -m nanigpt.bench.tokenizer` writes (results/rust/tokenizer.parquet).

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
