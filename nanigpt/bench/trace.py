"""Trace aggregation speed: the Python step breakdown vs its Rust port vs Holistic Trace Analysis.

Serves the Rust track's profiling question (issue 20): long profiling windows write traces of
hundreds of MB; how fast does each implementation turn one into the kernel-category table?
Larger traces are synthesised from a real one written by the trainer's profiler: its events are
replicated with timestamps shifted by the trace's span and `ProfilerStep#N` renumbered, so the
copy is a longer profiling window of the same run (same op mix, same nesting). Throughput is MB/s
of uncompressed JSON (the gzip size is recorded too). HolisticTraceAnalysis (PyPI
`HolisticTraceAnalysis`, not a project dependency) is timed on its own trace parsing when it is
importable (`uv run --with HolisticTraceAnalysis ...`); otherwise its rows say why not.

    python -m nanigpt.bench.trace --trace results/runs/RUN/trace.json.gz --sizes-mb 10 100 \
        --out results/rust/trace.parquet
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from nanigpt.analysis.trace_analysis import analyze_path, load_trace
from nanigpt.io import atomic_path

log = logging.getLogger("nanigpt.bench.trace")


def synthesize(trace: dict, target_mb: float, out: Path) -> tuple[int, int]:
    """Write `trace` replicated (shifted in time) to about `target_mb` MB of JSON; (json, gz) bytes."""
    events = trace["traceEvents"]
    timed = [e for e in events if isinstance(e, dict) and "ts" in e]
    lo = min(float(e["ts"]) for e in timed)
    hi = max(float(e["ts"]) + float(e.get("dur", 0)) for e in timed)
    steps = sum(1 for e in events if str(e.get("name", "")).startswith("ProfilerStep#"))
    one = len(json.dumps(events))
    copies = max(1, round(target_mb * 1e6 / one))
    written = 0
    with gzip.open(out, "wt", compresslevel=1) as f:
        f.write('{"traceEvents": [')
        for k in range(copies):
            for i, e in enumerate(events):
                if isinstance(e, dict) and "ts" in e:
                    e = {**e, "ts": float(e["ts"]) + k * (hi - lo)}
                    name = str(e.get("name", ""))
                    if name.startswith("ProfilerStep#") and name[13:].isdigit():
                        e["name"] = f"ProfilerStep#{int(name[13:]) + k * max(steps, 1)}"
                text = ("" if k == 0 and i == 0 else ",") + json.dumps(e)
                written += len(text)
                f.write(text)
        f.write("]}")
    return written + 17, out.stat().st_size


def hta_parse(path: Path) -> None:
    """HTA's own parsing of one trace (its TraceAnalysis reads a folder of rank traces)."""
    from hta.trace_analysis import TraceAnalysis

    folder = Path(tempfile.mkdtemp(prefix="hta."))
    try:
        shutil.copy(path, folder / "rank-0.json.gz")
        TraceAnalysis(trace_dir=str(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def hta_reason() -> str | None:
    try:
        import hta  # noqa: F401
    except ImportError as e:
        return f"HolisticTraceAnalysis not importable ({e}); run with uv run --with HolisticTraceAnalysis"
    return None


METHODS = ("python", "rust", "hta_parse")


def bench(source: Path, sizes: list[float], repeats: int, folder: Path, only=METHODS) -> list:
    trace = load_trace(source)
    rows = []
    for size in sizes:
        path = folder / f"trace_{size:g}MB.json.gz"
        json_bytes, gz_bytes = synthesize(trace, size, path)
        methods = {
            "python": lambda p=path: analyze_path(p, impl="python"),
            "rust": lambda p=path: analyze_path(p, impl="rust"),
            "hta_parse": lambda p=path: hta_parse(p),
        }
        for method, fn in methods.items():
            if method not in only:
                continue
            reason = hta_reason() if method == "hta_parse" else None
            times = []
            if reason is None:
                try:
                    for _ in range(repeats):
                        start = time.perf_counter()
                        fn()
                        times.append(time.perf_counter() - start)
                except Exception as e:  # HTA failing on a CPU-only trace is a result to record
                    if method != "hta_parse":
                        raise
                    reason, times = f"{type(e).__name__}: {e}".splitlines()[0][:300], []
            for r, t in enumerate(times):
                rows.append(_row(size, json_bytes, gz_bytes, method, r, t, None))
            if not times:
                rows.append(_row(size, json_bytes, gz_bytes, method, None, None, reason))
                log.warning(f"{size:g}MB {method}: skipped ({reason})")
            else:
                med = statistics.median(times)
                log.info(
                    f"{size:g}MB {method}: {med:.3f}s median, {json_bytes / 1e6 / med:.1f} MB/s"
                )
        path.unlink()
    return rows


def _row(size, json_bytes, gz_bytes, method, repeat, seconds, reason) -> dict:
    return {
        "target_mb": size,
        "json_bytes": json_bytes,
        "gz_bytes": gz_bytes,
        "method": method,
        "repeat": repeat,
        "seconds": seconds,
        "mb_per_s": json_bytes / 1e6 / seconds if seconds else None,
        "skipped": reason,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, required=True, help="a real trace.json.gz")
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[10.0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--out", type=Path, required=True, help="…/trace.parquet (+ .svg)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.trace.exists():
        print(f"error: trace not found: {args.trace}", file=sys.stderr)
        return 2
    if any(s <= 0 for s in args.sizes_mb) or args.repeats < 1:
        print("error: --sizes-mb must be > 0 and --repeats >= 1", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".bench_trace.", dir=args.out.parent))
    try:
        rows = bench(args.trace, args.sizes_mb, args.repeats, folder, args.methods)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    df = pl.DataFrame(rows)
    with atomic_path(args.out) as tmp:
        df.write_parquet(tmp)
    from nanigpt.plots import save_chart
    from nanigpt.plots.rust_bench import trace_chart

    save_chart(trace_chart(df), args.out.with_suffix(".svg"))
    print(df.group_by("target_mb", "method").agg(pl.col("mb_per_s").median()).sort("target_mb"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
