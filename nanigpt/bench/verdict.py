"""The Rust track's verdict: one row per stage of the seed's list, from the benchmarks' tables.

Serves the seed's expected outcome ("Rust makes a significant difference in data loading and
checkpointing, modest difference in orchestration, near-zero difference in the GPU-bound training
hot path"). Each row takes its numbers from a benchmark table written by one run
(`nanigpt.bench.tokenizer`, `.checkpoint`, `.trace`, `.orchestration`); a table not given leaves
its rows empty with a note, never a typed-in number. "Significant" is read as >= 2x against the
Python reference, "modest" as a ceiling below 2x on the whole stage, "near zero" as a ceiling
below 1.1x (the share of the stage Python could lose).

    python -m nanigpt.bench.verdict --checkpoint results/rust/checkpoint.parquet \
        --trace results/rust/trace.parquet --orchestration results/rust/orchestration.parquet \
        [--tokenizer results/rust/tokenizer.parquet] --out results/rust/verdict.parquet
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import polars as pl

from nanigpt.io import atomic_path

EXPECTED = {
    "tokenization": "significant",
    "loading": "significant",
    "checkpointing": "significant",
    "trace aggregation": "significant",
    "orchestration": "modest",
    "hot path": "near zero",
}


def _row(stage, metric, python, rust, library, library_value, held, note) -> dict:
    return {
        "stage": stage,
        "metric": metric,
        "python": python,
        "rust": rust,
        "best_library": library,
        "library": library_value,
        "rust_vs_python": None if python is None or rust is None else _gain(metric, python, rust),
        "rust_vs_library": None
        if library_value is None or rust is None
        else _gain(metric, library_value, rust),
        "expected": EXPECTED[stage],
        "held": held,
        "note": note,
    }


def _gain(metric: str, reference: float, ours: float) -> float:
    """How many times better ours is: a speed ratio for rates, a time ratio for seconds."""
    return ours / reference if "MB/s" in metric else reference / ours


def _concat(paths: list[Path]) -> pl.DataFrame | None:
    frames = [pl.read_parquet(p) for p in paths if p.exists()]
    return pl.concat(frames, how="diagonal_relaxed") if frames else None


def tokenizer_rows(df: pl.DataFrame | None) -> list[dict]:
    if df is None:
        note = "results/rust/tokenizer.parquet not given (nanigpt.bench.tokenizer)"
        return [
            _row("tokenization", "encode MB/s, 1 thread", None, None, None, None, None, note),
            _row("loading", "loader MB/s", None, None, None, None, None, note),
        ]

    def rate(measure, impl, threads=1):
        sel = df.filter(
            (pl.col("measure") == measure)
            & (pl.col("impl") == impl)
            & (pl.col("threads") == threads)
        )
        return float(sel["mb_per_s"].median()) if sel.height else None

    py, rs, tk = rate("encode", "python"), rate("encode", "rust"), rate("encode", "tiktoken")
    gain = None if py is None or rs is None else rs / py
    tok = _row(
        "tokenization",
        "encode MB/s, 1 thread",
        py,
        rs,
        "tiktoken",
        tk,
        None if gain is None else gain >= 2,
        "Python reference on a prefix",
    )
    lpy, lrs = rate("loader", "python"), rate("loader", "rust")
    held = None if lpy is None or lrs is None else lrs / lpy >= 2
    return [tok, _row("loading", "loader MB/s", lpy, lrs, None, None, held, "numpy vs Rust")]


def checkpoint_row(df: pl.DataFrame | None) -> dict:
    metric = "seconds the loop is blocked (median)"
    if df is None:
        return _row("checkpointing", metric, None, None, None, None, None, "no checkpoint table")
    timed = df.filter(pl.col("blocked_s").is_not_null())
    sizes = timed.filter(pl.col("method") == "rust")["state_bytes"].unique().to_list()
    size = min(sizes, key=lambda b: abs(b - 500e6))  # the bar is set at 500 MB
    at = timed.filter(pl.col("state_bytes") == size)
    med = {m: float(g["blocked_s"].median()) for (m,), g in at.group_by("method")}
    durable = {m: float(g["durable_s"].median()) for (m,), g in at.group_by("method")}
    libs = {m: v for m, v in med.items() if m in ("safetensors", "dcp_async")}
    best = min(libs, key=libs.get) if libs else None
    py, rs = med.get("torch_sha256"), med.get("rust")
    held = None if py is None or rs is None else py / rs >= 2
    note = f"{size / 1e6:.0f} MB state; durable after " + ", ".join(
        f"{m} {v:.2f}s" for m, v in sorted(durable.items())
    )
    return _row("checkpointing", metric, py, rs, best, libs.get(best), held, note)


def trace_row(df: pl.DataFrame | None) -> dict:
    metric = "step breakdown MB/s (JSON)"
    if df is None:
        return _row("trace aggregation", metric, None, None, None, None, None, "no trace table")
    timed = df.filter(pl.col("seconds").is_not_null())
    both = timed.group_by("json_bytes").agg(pl.col("method").n_unique().alias("n"))
    size = both.filter(pl.col("n") >= 2)["json_bytes"].max()
    at = timed.filter(pl.col("json_bytes") == size)
    rate = {m: float(g["mb_per_s"].median()) for (m,), g in at.group_by("method")}
    py, rs, hta = rate.get("python"), rate.get("rust"), rate.get("hta_parse")
    held = None if py is None or rs is None else rs / py >= 2
    note = f"{size / 1e6:.0f} MB trace; HTA timed on parsing only (no category table)"
    return _row("trace aggregation", metric, py, rs, "HTA parse", hta, held, note)


def orchestration_rows(df: pl.DataFrame | None) -> list[dict]:
    if df is None:
        note = "no orchestration table"
        return [
            _row("orchestration", "s", None, None, None, None, None, note),
            _row("hot path", "share", None, None, None, None, None, note),
        ]
    value = dict(zip(df["what"], df["value"], strict=True))
    ours = sum(v for k, v in value.items() if k.startswith(("import nanigpt", "load_config")))
    ours += sum(v for k, v in value.items() if k.startswith(("resolve_runs", "run_settings")))
    dry = next(v for k, v in value.items() if k.startswith("snakemake -n"))
    ceiling = dry / (dry - ours) if dry > ours else None  # if nanigpt's Python took no time
    orch = _row(
        "orchestration",
        "seconds of nanigpt Python per dry run",
        ours,
        None,
        None,
        None,
        None if ceiling is None else ceiling < 2,
        f"of {dry:.1f}s for `snakemake -n`; a Rust rewrite saves at most {ceiling:.2f}x; not written",
    )
    shares = {k: v for k, v in value.items() if "host share" in k}
    biggest = max(shares, key=lambda k: int(k.split("_l")[0][1:]))
    share = shares[biggest]
    hot = _row(
        "hot path",
        "host share outside torch ops (CPU)",
        share,
        None,
        None,
        None,
        None,
        f"{biggest.split()[0]}: Python between ops; CPU models are host-bound, so the seed's "
        "GPU claim needs the device run; Rust would not remove the torch dispatch",
    )
    return [orch, hot]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, nargs="*", default=[])
    parser.add_argument("--checkpoint", type=Path, nargs="*", default=[])
    parser.add_argument("--trace", type=Path, nargs="*", default=[])
    parser.add_argument("--orchestration", type=Path, nargs="*", default=[])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    missing = [p for p in [*args.tokenizer, *args.checkpoint, *args.trace] if not p.exists()]
    if missing:
        print(f"error: benchmark table not found: {missing[0]}", file=sys.stderr)
        return 2
    rows = [
        *tokenizer_rows(_concat(args.tokenizer)),
        checkpoint_row(_concat(args.checkpoint)),
        trace_row(_concat(args.trace)),
        *orchestration_rows(_concat(args.orchestration)),
    ]
    df = pl.DataFrame(rows, infer_schema_length=None)
    with atomic_path(args.out) as tmp:
        df.write_parquet(tmp)
    from nanigpt.plots import save_chart
    from nanigpt.plots.rust_bench import verdict_chart

    save_chart(verdict_chart(df), args.out.with_suffix(".svg"))
    with pl.Config(fmt_str_lengths=120, tbl_width_chars=250, tbl_rows=10):
        print(df.drop("note"))
    for r in rows:
        print(f"{r['stage']}: {r['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
