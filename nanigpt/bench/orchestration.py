"""Orchestration and hot-path overhead, measured before any Rust is written for them.

Serves the Rust track's last two rows (issue 20: "modest difference in orchestration, near-zero
difference in the GPU-bound training hot path"). In one process:
- planning: the Python a Snakemake invocation runs before scheduling, phase by phase (import of
  nanigpt.graph.config, `load_config` = YAML + schema validation + cross-checks, `resolve_runs`, and
  the JSON of every run's settings the rules pass as params), and the wall time of a whole no-op
  dry run (`snakemake -n` on the default graph, in a subprocess) for scale;
- hot path: the share of a profiled training step the host spends outside torch ops (Python between
  ops: the CPU trace's `idle`, from the step breakdown) for small CPU models. On a GPU the
  equivalent is the device's idle share in the GPU trace (the lead's device run).
Rust would only help the part that is Python: that share is the ceiling on what a rewrite can save.

    python -m nanigpt.bench.orchestration --out results/rust/orchestration.parquet
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from nanigpt.io import atomic_path

log = logging.getLogger("nanigpt.bench.orchestration")
ROOT = Path(__file__).resolve().parents[2]
MODELS = {"d32_l1": (32, 1, 2), "d128_l2": (128, 2, 4), "d256_l4": (256, 4, 4)}


def _timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def planning(repeats: int) -> list[dict]:
    start = time.perf_counter()
    from nanigpt.graph import config as cfg

    rows = [_row("planning", "import nanigpt.graph.config", time.perf_counter() - start, None)]
    t, config = _timed(lambda: cfg.load_config(cfg.DEFAULT_CONFIG_PATH), repeats)
    rows.append(_row("planning", "load_config (YAML + schema + checks)", t, None))
    t, runs = _timed(lambda: cfg.expand_runs(config), repeats)  # resolve_runs is memoised
    rows.append(_row("planning", f"expand_runs ({len(runs)} runs)", t, None))
    t, _ = _timed(lambda: [cfg.run_settings_json(r) for r in runs.values()], repeats)
    rows.append(_row("planning", "run_settings_json (all runs)", t, None))
    start = time.perf_counter()
    dry = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--quiet", "all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    note = None if dry.returncode == 0 else dry.stderr.strip().splitlines()[-1][:200]
    rows.append(_row("planning", "snakemake -n (whole process)", time.perf_counter() - start, note))
    return rows


def hot_path(steps: int) -> list[dict]:
    from nanigpt.analysis.trace_analysis import analyze_path
    from nanigpt.train import train
    from tests.test_train import SEQ, make_run, write_tiny_data

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_tiny_data(Path(tmp) / "data")
        for label, (d_model, n_layer, n_head) in MODELS.items():
            run = make_run(tokens=(steps + 2) * 8 * SEQ, profile=True)
            run["model"].update(d_model=d_model, n_layer=n_layer, n_head=n_head)
            run["profile"] = {"enabled": True, "wait": 1, "warmup": 1, "active": steps}
            out = Path(tmp) / label
            train(run, data["train"], data["val"], data["gt"], out)
            result = analyze_path(out / "trace.json.gz")
            step_s = result.window_s / max(result.steps, 1)
            idle = result.wall_time_s["idle"] / result.window_s if result.window_s else None
            rows.append(_row("hot_path", f"{label} step time (s)", step_s, None))
            rows.append(_row("hot_path", f"{label} host share outside torch ops", idle, None))
            log.info(f"{label}: step {step_s * 1e3:.2f} ms, Python between ops {idle:.1%}")
    return rows


def _row(stage: str, what: str, value: float | None, note: str | None) -> dict:
    return {"stage": stage, "what": what, "value": value, "note": note}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="profiled steps per model")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.path.insert(0, str(ROOT))  # the hot-path runs reuse the tests' tiny data and run config
    rows = planning(args.repeats) + hot_path(args.steps)
    df = pl.DataFrame(rows)
    with atomic_path(args.out) as tmp:
        df.write_parquet(tmp)
    with pl.Config(fmt_str_lengths=60, tbl_rows=30):
        print(df)
    return 0


if __name__ == "__main__":
    sys.exit(main())
