"""Jobs that train several runs in one process, and the publishing of their runs' folders.

A training process pays ~4.7 CPU-seconds of start-up on this 2-core machine (importing torch and
the trainer 2.8 s, torch.optim importing `torch._dynamo` on its first step 2.0 s), as much as a
whole small run trains. Two kinds of job therefore train several runs each: a WSD sweep's stable
runs and cooldowns (`nanigpt.wsd`, which plans them), and the plain runs of a sweep that sets
`grouped: true` (planned here). Either job trains into `results/{wsd,jobs}/<job_id>/runs/<run_id>/`
and a tiny job per run (`publish`, no torch import) hard-links the run's files into
`results/runs/<run_id>/`, the same outputs as a run of its own, for Snakemake: the job's folder is
deliberately not an output, so a failed or killed job keeps its finished runs and checkpoints.

Grouped jobs (`plan_groups`): every plain run (not WSD, world size 1) listed by a sweep with
`grouped: true` trains in the job of its (dataset, size, seed, parallelism), across those sweeps:
the runs of a job share their input shards, and splitting by size and seed keeps the jobs about
as long as each other and lets them run side by side. A run's id, settings and outputs are those of
its own `train_run` job; only where it trains changes.

Resume: every finished run records the fingerprint of its settings and inputs in `run.json` next
to its files, and a rerun of the job skips each finished run with the same fingerprint; the
unfinished run resumes from its own rolling checkpoint, as a run of its own does.

    python -m nanigpt.jobs train --job JSON_OR_@PATH --train train.bin --val val.bin \\
        --ground-truth ground_truth.json --out results/jobs/JOB_ID
    python -m nanigpt.jobs publish --src results/jobs/JOB_ID/runs/RUN_ID --dst results/runs/RUN_ID
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nanigpt.io import read_json, write_json_atomic

log = logging.getLogger("nanigpt.jobs")

# The files of a run folder (train_run's outputs), summary.json last: a published folder with a
# summary is complete. `snapshots/` (training.snapshot_every) is linked too, before the summary.
RUN_FILES = ("config.json", "metrics.parquet", "trace.json.gz", "model.pt", "summary.json")
SNAPSHOTS = "snapshots"
MARKER = "run.json"  # a grouped job's finished run: {"fingerprint", "cpu_s"}
# Keys of a resolved run that are bookkeeping, not settings (nanigpt.config.run_settings_json).
_BOOKKEEPING = ("sweeps", "budgets")


def finished(marker: Path, fingerprint: str, *files: Path) -> bool:
    """Whether `marker` records `fingerprint` and every one of `files` exists."""
    if not marker.is_file() or not all(f.is_file() for f in files):
        return False
    try:
        return read_json(marker, what="job marker").get("fingerprint") == fingerprint
    except (OSError, ValueError):
        return False


# --- planning grouped jobs ----------------------------------------------------------------------


def world_size(run: dict[str, Any]) -> int:
    par = run["parallelism"]
    return par.get("dp", 1) * par.get("fsdp", 1) * par.get("tp", 1) * par.get("ep", 1)


def grouped_sweeps(config: dict[str, Any]) -> list[str]:
    return [name for name, sweep in config["sweeps"].items() if sweep.get("grouped")]


def plan_groups(
    config: dict[str, Any], runs: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The grouped jobs of a config's runs (`nanigpt.config.resolve_runs`): `{job_id: job}`.

    A run is grouped when a sweep that lists it sets `grouped: true`, it is not a WSD run (those
    train in their WSD job) and it runs in one process (world size 1). A job is
    `{"job_id", "dataset", "runs": [run settings, as train_run gets them]}` (and `"versions":
    {run_id: "sweep=version,..."}` where a sweep declares `version:`), its runs in config order, one job per (dataset, size, seed, parallelism): job id
    `{dataset}_{size}_{parallelism}_seed{seed}`.
    """
    from nanigpt.wsd import is_wsd_run

    opted = set(grouped_sweeps(config))
    jobs: dict[str, dict[str, Any]] = {}
    for run in runs.values():
        if not opted & set(run.get("sweeps", ())) or is_wsd_run(run) or world_size(run) != 1:
            continue
        job_id = f"{run['dataset']}_{run['size']}_{run['parallelism_name']}_seed{run['seed']}"
        job = jobs.setdefault(job_id, {"job_id": job_id, "dataset": run["dataset"], "runs": []})
        job["runs"].append({k: v for k, v in run.items() if k not in _BOOKKEEPING})
        versions = [
            f"{sweep}={config['sweeps'][sweep]['version']}"
            for sweep in sorted(run["sweeps"])
            if config["sweeps"][sweep].get("version") is not None
        ]  # as nanigpt.runs.study_version: a bumped `version:` retrains the sweep's runs
        if versions:
            job.setdefault("versions", {})[run["run_id"]] = ",".join(versions)
    return jobs


def group_of(jobs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each grouped run's job id."""
    return {run["run_id"]: jid for jid, job in jobs.items() for run in job["runs"]}


# --- training a grouped job ---------------------------------------------------------------------


def run_group(
    job: dict[str, Any], train_path: Path, val_path: Path, truth_path: Path, out: Path
) -> dict[str, Any]:
    """Train a grouped job's runs into `out/runs/<run_id>/`, skipping those already finished."""
    from nanigpt import checkpoint
    from nanigpt.train import train

    inputs = {"train": Path(train_path), "val": Path(val_path), "ground_truth": Path(truth_path)}
    done: dict[str, str] = {}
    for run in job["runs"]:
        run_dir = out / "runs" / run["run_id"]
        fingerprint = checkpoint.run_fingerprint(run, inputs)
        version = job.get("versions", {}).get(run["run_id"])
        if version:  # a bumped study version retrains a finished run
            fingerprint = f"{fingerprint}:{version}"
        marker = run_dir / MARKER
        if finished(marker, fingerprint, *(run_dir / f for f in RUN_FILES)):
            log.info(f"{run['run_id']}: finished already, skipped")
        else:
            cpu = time.process_time()
            train(run, *inputs.values(), run_dir)
            write_json_atomic(
                marker, {"fingerprint": fingerprint, "cpu_s": time.process_time() - cpu}
            )
        done[run["run_id"]] = fingerprint
    result = {"job_id": job["job_id"], "runs": done}
    write_json_atomic(out / "done.json", result)
    return result


# --- publishing a run's folder ------------------------------------------------------------------


def _link(src: Path, dst: Path) -> None:
    tmp = dst.parent / f".{dst.name}.link.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def publish(src: Path, dst: Path) -> None:
    """Hard-link (or copy, across file systems) a finished run's files into its run folder, each
    replaced atomically, its snapshots (exactly the source's) before summary.json, which is last."""
    missing = [f for f in RUN_FILES if not (src / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{src}: missing {missing}; rerun its job (delete its done.json)")
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "summary.json").unlink(missing_ok=True)  # incomplete until the summary is back
    snapshots = sorted((src / SNAPSHOTS).glob("*.pt")) if (src / SNAPSHOTS).is_dir() else []
    if (dst / SNAPSHOTS).is_dir():
        keep = {p.name for p in snapshots}
        for stale in (dst / SNAPSHOTS).glob("*.pt"):
            if stale.name not in keep:
                stale.unlink()
    if snapshots:
        (dst / SNAPSHOTS).mkdir(exist_ok=True)
    for path in snapshots:
        _link(path, dst / SNAPSHOTS / path.name)
    for name in RUN_FILES:
        _link(src / name, dst / name)


def parse_job(text: str) -> dict[str, Any]:
    """A job from the command line: its JSON, or `@path` to a file holding it."""
    if text.startswith("@"):
        return read_json(text[1:], what="job file")
    return json.loads(text)


def job_cli(
    argv: list[str] | None, prog: str, description: str, train_job: Callable, job_dir: str
) -> int:
    """The `train` / `publish` CLI of a job module (`nanigpt.jobs`, `nanigpt.wsd`): `train_job`
    trains a parsed job (job, train, val, ground truth, out); `job_dir` names its folder."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train the job's runs, skipping finished ones")
    p_train.add_argument("--job", required=True, help="job JSON, or @path to it")
    p_train.add_argument("--train", required=True)
    p_train.add_argument("--val", required=True)
    p_train.add_argument("--ground-truth", required=True)
    p_train.add_argument("--out", required=True, help=job_dir)
    p_pub = sub.add_parser("publish", help="link a finished run's files into its run folder")
    p_pub.add_argument("--src", required=True)
    p_pub.add_argument("--dst", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        if args.command == "publish":
            publish(Path(args.src), Path(args.dst))
            return 0
        job = parse_job(args.job)
        train_job(job, Path(args.train), Path(args.val), Path(args.ground_truth), Path(args.out))
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    return job_cli(
        argv, "python -m nanigpt.jobs", __doc__.split("\n")[0], run_group, "results/jobs/JOB_ID"
    )


if __name__ == "__main__":
    sys.exit(main())
