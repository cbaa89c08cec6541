"""The run table: which runs does the config declare, what did they measure, which are stale?

`python -m nanigpt.graph.runtable show [--sweep S] [--only-changed] [--format table|csv|parquet]` lists every
run the config declares (`nanigpt.graph.config.resolve_runs`, the same runs the graph trains) with its
settings (flattened: `model.d_model`, `training.lr`, ...), its results from `summary.json` (final
validation loss, gap to the data's floor, tokens/s, MFU, FLOPs, wall time), the job's benchmark
(`results/benchmarks/train_run/{run_id}.tsv`: Snakemake's wall seconds and peak RSS) and its state:

- `done`: summary.json exists, written for the declared settings, by code unchanged since;
- `stale`: done, but a module the run imported has changed since (`nanigpt.fingerprint`);
- `changed`: summary.json exists for other settings (Snakemake reruns it);
- `running`: a live process on this host trains it;
- `failed`: no summary, and its log ends in an error;
- `to run`: none of the above.

`--only-changed` keeps only the columns whose value differs between the rows shown (as DVC's
`exp show --only-changed`). `python -m nanigpt.graph.runtable stale` lists every output of the working
directory whose recorded code (`.nanigpt/code/`) has changed, with the modules that did.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

from nanigpt import fingerprint
from nanigpt.graph import paths
from nanigpt.graph.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    load_config,
    resolve_runs,
    run_settings_json,
    tokens_label,
)

RESULT_COLUMNS = {
    "final_val_loss": "final_val_loss",
    "final_val_bpb": "final_val_bpb",
    "gap_bpb": "gap_bpb",
    "tokens_per_s": "tokens_per_s",
    "mfu": "mfu",
    "flops_total": "flops_total",
    "wall_s": "wall_s",
    "resumed_from_step": "resumed_from_step",
}
BENCHMARKS = Path("results") / "benchmarks"
IDENTITY = ("dataset", "arch", "arch_kind", "size", "tokens", "parallelism_name", "seed")
ERROR_MARKERS = ("Traceback (most recent call last)", "error:", "Error:")


class _Unversioned:
    """The version param of a run whose sweeps declare no `version:`. Snakemake compares params
    as the set of their reprs and leaves out values it cannot represent (instances of a class of
    its own are such), so an unversioned run keeps exactly the params it had before versions
    existed, and declaring one sweep's version reruns that sweep's runs only."""

    def __str__(self) -> str:
        return ""


UNVERSIONED = _Unversioned()


def study_version(config: dict, run: dict) -> str | _Unversioned:
    """`sweep=version,...` of the sweeps of `run` that declare a `version:` (the Snakemake param
    that forces a rerun when a study's version is bumped), else `UNVERSIONED`."""
    versions = [
        f"{sweep}={config['sweeps'][sweep]['version']}"
        for sweep in sorted(run["sweeps"])
        if config["sweeps"][sweep].get("version") is not None
    ]
    return ",".join(versions) or UNVERSIONED


LABELS = ("sweep", "arch", "size", "tokens", "parallelism", "seed")


def _joined(values) -> str:
    return ",".join(str(v) for v in dict.fromkeys(values)) or "-"


def run_labels(config: dict, run: dict) -> dict[str, str]:
    """The `snakemake --report` labels of one run's figure (a row of the report's run table)."""
    return {
        "sweep": _joined(run["sweeps"]),
        "arch": run["arch"],
        "size": run["size"],
        "tokens": tokens_label(run["tokens"]),
        "parallelism": run["parallelism_name"],
        "seed": str(run.get("seed", run["training"]["seed"])),
    }


def sweeps_labels(config: dict, sweeps: list[str]) -> dict[str, str]:
    """The report labels of a figure drawn from the runs of `sweeps`: each label lists the values
    those runs take."""
    runs = [r for r in resolve_runs(config).values() if set(r["sweeps"]) & set(sweeps)]
    labels = {"sweep": _joined(sweeps)}
    # in the config's own order, whatever order the runs were resolved (or cached) in
    labels["arch"] = _joined(a for a in config["archs"] if a in {r["arch"] for r in runs})
    labels["size"] = _joined(s for s in config["sizes"] if s in {r["size"] for r in runs})
    labels["tokens"] = _joined(tokens_label(t) for t in sorted({r["tokens"] for r in runs}))
    labels["parallelism"] = _joined(r["parallelism_name"] for r in runs)
    labels["seed"] = _joined(str(r.get("seed", r["training"]["seed"])) for r in runs)
    return labels


def flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    """{"model": {"moe": {"top_k": 1}}} -> {"model.moe.top_k": 1}; lists become JSON text."""
    if isinstance(value, dict):
        for key in sorted(value):
            flatten(f"{prefix}.{key}" if prefix else key, value[key], out)
    elif isinstance(value, list):
        out[prefix] = json.dumps(value)
    else:
        out[prefix] = value


def read_benchmark(path: Path) -> dict[str, float | None]:
    """Snakemake's benchmark TSV (header `s h:m:s max_rss ...`): wall seconds and peak RSS (MB)."""
    try:
        header, row, *_ = path.read_text().splitlines()
    except (OSError, ValueError):
        return {"job_s": None, "job_max_rss_mb": None}
    values = dict(zip(header.split("\t"), row.split("\t"), strict=False))

    def number(key: str) -> float | None:
        try:
            return float(values[key])
        except (KeyError, ValueError):
            return None

    return {"job_s": number("s"), "job_max_rss_mb": number("max_rss")}


def live_run_dirs(workdir: Path) -> set[str]:
    """Run ids of `workdir` that a live process of this host trains (its arguments name the run
    folder, resolved against its own working directory)."""
    runs_dir = (workdir / "results" / "runs").resolve()
    live = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            if "nanigpt" not in cmdline or f"{paths.RUNS}/" not in cmdline:
                continue
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:
            continue
        for part in cmdline.split("\0"):
            if f"{paths.RUNS}/" in part:
                folder = (cwd / part).resolve()
                if folder.parent == runs_dir:
                    live.add(folder.name)
    return live


def _declared_settings(run: dict) -> dict:
    return json.loads(run_settings_json(run))


def run_state(run: dict, workdir: Path, live: set[str], stale: set[str]) -> str:
    run_dir = workdir / "results" / "runs" / run["run_id"]
    summary = run_dir / "summary.json"
    if summary.exists():
        try:
            built = json.loads((run_dir / "config.json").read_text())["run"]
        except (OSError, ValueError, KeyError):
            built = None
        if built is not None and built != _declared_settings(run):
            return "changed"
        return "stale" if paths.run_summary(run["run_id"]) in stale else "done"
    if run["run_id"] in live:
        return "running"
    log = workdir / "results" / "logs" / "train_run" / f"{run['run_id']}.log"
    if log.exists():
        tail = log.read_text(errors="replace")[-4000:]
        if any(marker in tail for marker in ERROR_MARKERS):
            return "failed"
    return "to run"


def run_rows(config: dict, workdir: Path, sweep: str | None = None) -> list[dict[str, Any]]:
    """One row per declared run (of `sweep`, if given): settings, results, benchmark, state."""
    runs = resolve_runs(config)
    if sweep is not None and sweep not in config["sweeps"]:
        raise ConfigError(
            f"--sweep {sweep!r}: the config's sweeps are {', '.join(config['sweeps'])}"
        )
    live = live_run_dirs(workdir)
    stale = set(fingerprint.stale_outputs(workdir))
    rows = []
    for run_id, run in runs.items():
        if sweep is not None and sweep not in run["sweeps"]:
            continue
        row: dict[str, Any] = {"run_id": run_id, "state": run_state(run, workdir, live, stale)}
        row["sweeps"] = ",".join(run["sweeps"])
        row["version"] = str(study_version(config, run)) or None
        settings = _declared_settings(run)
        for key in IDENTITY:
            if key in settings:
                row[key] = settings.pop(key)
        summary_path = workdir / "results" / "runs" / run_id / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        for column, key in RESULT_COLUMNS.items():
            row[column] = summary.get(key)
        row.update(read_benchmark(workdir / BENCHMARKS / "train_run" / f"{run_id}.tsv"))
        flatten("", settings, row)
        rows.append(row)
    columns = list(dict.fromkeys(c for row in rows for c in row))  # MoE runs have more settings
    return [{c: row.get(c) for c in columns} for row in rows]


def only_changed(rows: list[dict[str, Any]], keep: tuple[str, ...] = ("run_id", "state")):
    """The rows with only the columns whose values differ between them (and `keep`)."""
    columns = list(rows[0]) if rows else []
    varying = [c for c in columns if c in keep or len({json.dumps(r.get(c)) for r in rows}) > 1]
    return [{c: r.get(c) for c in varying} for r in rows]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no runs)"
    columns = list(rows[0])
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def write_rows(rows: list[dict[str, Any]], fmt: str, out: str | None) -> None:
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        from nanigpt.io import atomic_path

        if out is None:
            raise ValueError("--format parquet needs --out FILE")
        with atomic_path(out) as tmp:
            pq.write_table(pa.Table.from_pylist(rows), tmp)
        return
    if fmt == "csv":
        stream = open(out, "w", newline="") if out else sys.stdout  # noqa: SIM115
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
        if out:
            stream.close()
        return
    text = format_table(rows) + "\n"
    if out:
        Path(out).write_text(text)
    else:
        sys.stdout.write(text)


def _load(configfile: str | None, workdir: str) -> dict:
    """The given config, else the working directory's embedded default (the one the Snakefile
    beside it uses), else the package's."""
    if configfile:
        return load_config(configfile)
    local = Path(workdir) / "workflow" / "config" / "default.yaml"
    return load_config(local if local.exists() else DEFAULT_CONFIG_PATH)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.graph.runtable", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="every declared run: settings, results, state")
    show.add_argument("--configfile", help="config (default: workflow/config/default.yaml)")
    show.add_argument("--workdir", default=".", help="the graph's working directory")
    show.add_argument("--sweep", help="only the runs of this sweep")
    show.add_argument("--only-changed", action="store_true", help="drop columns equal in all rows")
    show.add_argument("--format", choices=("table", "csv", "parquet"), default="table")
    show.add_argument("--out", help="write here instead of stdout (required for parquet)")
    stale = sub.add_parser("stale", help="outputs whose recorded code has changed since")
    stale.add_argument("--workdir", default=".", help="the graph's working directory")
    args = parser.parse_args(argv)
    try:
        if args.command == "stale":
            found = fingerprint.stale_outputs(args.workdir)
            for output, modules in sorted(found.items()):
                print(f"{output}\t{', '.join(modules)}")
            print(f"{len(found)} stale output(s)", file=sys.stderr)
            return 0
        rows = run_rows(_load(args.configfile, args.workdir), Path(args.workdir), args.sweep)
        if args.only_changed:
            rows = only_changed(rows)
        write_rows(rows, args.format, args.out)
    except (ConfigError, ValueError, OSError) as e:
        print(f"nanigpt.graph.runtable: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
