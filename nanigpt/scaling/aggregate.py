"""Gather run summaries into one table: the input of every scaling fit and headline figure.

Serves core question 4 (how do dense and MoE scale?): each training run ends by writing a flat
`summary.json`; this module reads them all and writes `results/scaling/runs.parquet`, one row per
run with the summary's flat keys (the nested `provenance` is dropped, its `config_hash` kept).

CLI: `python -m nanigpt.scaling.aggregate --out results/scaling/runs.parquet SUMMARY_JSON...`
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from nanigpt.io import atomic_path

# The flat keys of summary.json (docs/interfaces.md) and their column types. A summary may carry
# more scalar keys; they are kept with an inferred type.
SUMMARY_SCHEMA: dict[str, Any] = {
    "run_id": pl.String,
    "dataset": pl.String,
    "arch": pl.String,
    "arch_kind": pl.String,
    "size": pl.String,
    "parallelism_name": pl.String,
    "seed": pl.Int64,  # training seed (null in summaries written before seeds were recorded)
    "tokens_target": pl.Int64,
    "tokens_trained": pl.Int64,
    "steps": pl.Int64,
    "params_total": pl.Int64,
    "params_active": pl.Int64,
    "params_embedding": pl.Int64,
    "params_non_embedding_total": pl.Int64,
    "params_non_embedding_active": pl.Int64,
    "flops_per_token": pl.Float64,
    "flops_total": pl.Float64,
    "flops_6nd": pl.Float64,
    "final_val_loss": pl.Float64,
    "final_val_bpb": pl.Float64,
    "floor_bpb": pl.Float64,
    "gap_bpb": pl.Float64,
    "wall_s": pl.Float64,
    "tokens_per_s": pl.Float64,
    "mfu": pl.Float64,
    "device": pl.String,
    "config_hash": pl.String,
}

# Keys without which a row is useless to the fits; a summary lacking one is refused by name.
REQUIRED_KEYS = (
    "run_id",
    "arch_kind",
    "tokens_trained",
    "params_active",
    "params_non_embedding_active",
    "flops_per_token",
    "flops_total",
    "final_val_bpb",
)


class AggregateError(ValueError):
    """A summary file is missing, unreadable or lacks a key the scaling fits need."""


def load_summary(path: str | Path) -> dict[str, Any]:
    """Read one summary.json into a flat row; provenance is dropped except its config hash."""
    path = Path(path)
    if not path.is_file():
        raise AggregateError(f"summary not found: {path}")
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AggregateError(f"summary {path} is not valid JSON: {e}") from e
    if not isinstance(summary, dict):
        raise AggregateError(
            f"summary {path}: expected a JSON object, got {type(summary).__name__}"
        )
    missing = [key for key in REQUIRED_KEYS if summary.get(key) is None]
    if missing:
        raise AggregateError(f"summary {path}: missing required key(s) {missing}")
    for key in REQUIRED_KEYS[2:]:
        value = summary[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AggregateError(f"summary {path}: {key} = {value!r}, expected a number")
    row: dict[str, Any] = {}
    for key, value in summary.items():
        if key == "provenance":
            if isinstance(value, dict) and "config_hash" in value:
                row["config_hash"] = value["config_hash"]
            continue
        if isinstance(value, dict | list):
            continue  # the table holds the flat keys only
        row[key] = value
    return row


def aggregate(paths: Iterable[str | Path]) -> pl.DataFrame:
    """One row per run, sorted by run_id; a run_id seen twice is an error naming both files."""
    rows: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    for path in paths:
        row = load_summary(path)
        run_id = str(row["run_id"])
        if run_id in seen:
            raise AggregateError(f"run_id {run_id!r} appears in both {seen[run_id]} and {path}")
        seen[run_id] = Path(path)
        rows.append(row)
    if not rows:
        raise AggregateError("no summary files given")
    keys: list[str] = []
    for row in rows:
        keys.extend(key for key in row if key not in keys)
    keys += [] if "seed" in keys else ["seed"]  # every table has it: seed replicates group by it
    columns = {}
    for key in keys:
        values = [row.get(key) for row in rows]
        dtype = SUMMARY_SCHEMA.get(key)
        try:
            columns[key] = pl.Series(key, values, dtype=dtype, strict=False)
        except (TypeError, ValueError, pl.exceptions.PolarsError) as e:
            raise AggregateError(
                f"column {key!r}: values {values[:5]} do not form a column: {e}"
            ) from e
    return pl.DataFrame(columns).sort("run_id")


def write_runs(table: pl.DataFrame, out: str | Path) -> None:
    with atomic_path(out) as tmp:
        table.write_parquet(tmp)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.scaling.aggregate",
        description=__doc__.splitlines()[0],
        fromfile_prefix_chars="@",  # `@LIST`: a file of arguments, one a line
    )
    parser.add_argument("--out", required=True, help="runs.parquet to write")
    parser.add_argument("summaries", nargs="+", help="summary.json files, one per run (or @LIST)")
    args = parser.parse_args(argv)
    try:
        table = aggregate(args.summaries)
    except AggregateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_runs(table, args.out)
    print(f"wrote {args.out}: {table.height} runs, {table.width} columns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
