"""Train a job of several runs in one process, of either kind, and publish its runs' folders.

Serves core question 4 (scaling fits that are determined) at a price the 2-core CPU default can
pay: which runs a job trains is planned by `nanigpt.graph.jobs` (its docstring says why jobs
exist); the job spec carries its `kind`, and this one CLI trains either:

- `wsd`: each stable run at constant learning rate, keeping its training state at each budget's
  branch point, then each budget's cooldown of `decay_frac` of its steps (linear decay to
  `min_lr_frac`) branched from there (`nanigpt.training.schedule`; Hägele et al. 2024, arXiv
  2405.18392). B budgets cost the largest budget's stable phase plus the cooldowns instead of the
  sum of all budgets. On the CPU a branch is bit-identical to a WSD run of the same budget trained
  straight through (tests/test_wsd.py).
- `grouped`: the job's plain runs in turn, each exactly as its own `train_run` job would; or,
  where the job says `stack: true` (`training.stack_replicas`), its runs of one shape that differ
  only in seed or scalar hyperparameters as stacked replicas, one `plan_stacks` group at a time
  (`nanigpt.training.stacked_runs.train_stacked`: each replica's losses equal the run alone's
  to float rounding; tests/test_jobs.py holds the job's summaries equal to the unstacked job's),
  and the runs of its `alone` list, and any run left in a group of one, with the trainer.

A job trains into its folder (`nanigpt.graph.paths.job_dir`: `results/{wsd,jobs}/<job_id>/`),
each run into `runs/<run_id>/`, and a tiny job per run (`publish`, no torch import) hard-links the
run's files into `results/runs/<run_id>/`, the same outputs as a run of its own, for Snakemake: the
job's folder is deliberately not an output, so a failed or killed job keeps its finished runs and
checkpoints.

Resume: every finished stable run (`stable/<stable_id>/stable.json`), cooldown
(`runs/<run_id>/branch.json`) and grouped run (`runs/<run_id>/run.json`) records the fingerprint
of its settings and inputs, and a rerun of the job skips what is finished with the same
fingerprint: a killed cooldown reruns alone (from its own rolling checkpoint if it wrote one, else
from the stable run's checkpoint at its branch point), a killed stable or grouped run resumes from
its rolling checkpoint, as a run of its own does. A stacked group writes no checkpoint: a rerun
stacks the group's unfinished runs again from step 0 and leaves its finished runs alone (their
files and markers untouched, so nothing downstream reruns; a replica's result does not depend on
which others share its stack, beyond float rounding).

    python -m nanigpt.training.jobs train --job @results/specs/wsd/JOB_ID.json \\
        --out results/wsd/JOB_ID                      # the graph's spec names its inputs
    python -m nanigpt.training.jobs train --job JSON_OR_@PATH --train train.bin --val val.bin \\
        --ground-truth ground_truth.json --out results/wsd/JOB_ID
    python -m nanigpt.training.jobs publish --src results/wsd/JOB_ID/runs/RUN_ID \\
        --dst results/runs/RUN_ID
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from nanigpt.io import read_json, write_json_atomic
from nanigpt.training.config import branch_step_of

log = logging.getLogger("nanigpt.training.jobs")

# The files of a run folder (train_run's outputs), summary.json last: a published folder with a
# summary is complete. `snapshots/` (training.snapshot_every) is linked too, before the summary.
RUN_FILES = ("config.json", "metrics.parquet", "trace.json.gz", "model.pt", "summary.json")
SNAPSHOTS = "snapshots"
MARKER = "run.json"  # a grouped job's finished run: {"fingerprint", "cpu_s"}


def finished(marker: Path, fingerprint: str, *files: Path) -> bool:
    """Whether `marker` records `fingerprint` and every one of `files` exists."""
    if not marker.is_file() or not all(f.is_file() for f in files):
        return False
    try:
        return read_json(marker, what="job marker").get("fingerprint") == fingerprint
    except (OSError, ValueError):
        return False


# --- training a job -----------------------------------------------------------------------------


def _train_unless_finished(
    run: dict[str, Any],
    inputs: dict[str, Path],
    run_dir: Path,
    marker: Path,
    fingerprint: str,
    files: list[Path],
    record: dict[str, Any] | None = None,
    **train_kwargs: Any,
) -> None:
    """Train `run` into `run_dir` unless `marker` records `fingerprint` and every one of `files`
    exists; then write `marker`: {"fingerprint", **record, "cpu_s"}."""
    from nanigpt.train import train  # torch: not for `publish`

    if finished(marker, fingerprint, *files):
        log.info(f"{run['run_id']}: finished already, skipped")
        return
    cpu = time.process_time()
    train(run, *inputs.values(), run_dir, **train_kwargs)
    write_json_atomic(
        marker, {"fingerprint": fingerprint, **(record or {}), "cpu_s": time.process_time() - cpu}
    )


def train_wsd_job(job: dict[str, Any], inputs: dict[str, Path], out: Path) -> dict[str, str]:
    """A WSD job's stable runs, then each one's cooldowns; {branch run_id: fingerprint}."""
    from nanigpt.training.checkpoint.state import run_fingerprint

    done: dict[str, str] = {}
    for entry in job["stables"]:
        stable, branches = entry["run"], entry["branches"]
        stable_dir = out / "stable" / stable["run_id"]
        kept = {
            branch_step_of(b): stable_dir / f"branch_step{branch_step_of(b):07d}.pt"
            for b in branches
        }
        stable_fp = run_fingerprint(stable, inputs)
        log.info(f"{stable['run_id']}: stable phase to step {max(kept)} (branches {sorted(kept)})")
        _train_unless_finished(
            stable, inputs, stable_dir, stable_dir / "stable.json", stable_fp,
            list(kept.values()), {"branch_steps": sorted(kept)}, keep_checkpoints=kept,
        )  # fmt: skip
        for branch in branches:
            branch_dir = out / "runs" / branch["run_id"]
            branch_fp = run_fingerprint(branch, inputs)
            step = branch_step_of(branch)
            _train_unless_finished(
                branch, inputs, branch_dir, branch_dir / "branch.json", branch_fp,
                [branch_dir / f for f in RUN_FILES],
                {"stable": stable["run_id"], "branch_step": step},
                branch_from=(kept[step], stable_fp),
            )  # fmt: skip
            done[branch["run_id"]] = branch_fp
    return done


def train_grouped_job(job: dict[str, Any], inputs: dict[str, Path], out: Path) -> dict[str, str]:
    """A grouped job's runs into `out/runs/<run_id>/`: in turn, or stacked where the job says
    `stack` (module docstring); {run_id: fingerprint}."""
    from nanigpt.training.checkpoint.state import run_fingerprint

    done: dict[str, str] = {}
    to_stack: list[tuple[dict[str, Any], Path, str]] = []
    alone = set(job.get("alone", ()))
    for run in job["runs"]:
        run_dir = out / "runs" / run["run_id"]
        fingerprint = run_fingerprint(run, inputs)
        version = job.get("versions", {}).get(run["run_id"])
        if version:  # a bumped study version retrains a finished run
            fingerprint = f"{fingerprint}:{version}"
        files = [run_dir / f for f in RUN_FILES]
        done[run["run_id"]] = fingerprint
        if job.get("stack") and run["run_id"] not in alone:
            if finished(run_dir / MARKER, fingerprint, *files):
                log.info(f"{run['run_id']}: finished already, skipped")
            else:
                to_stack.append((run, run_dir, fingerprint))
            continue
        _train_unless_finished(run, inputs, run_dir, run_dir / MARKER, fingerprint, files)
    if to_stack:
        _train_stacked_groups(to_stack, inputs)
    return done


def _train_stacked_groups(
    pending: list[tuple[dict[str, Any], Path, str]], inputs: dict[str, Path]
) -> None:
    """Train the unfinished runs of a stacked job, one `plan_stacks` group at a time (a group of
    one with the trainer, which checkpoints and profiles), then write each run's marker:
    {"fingerprint", "stacked": [the group's run ids], "cpu_s": the group's CPU time / K}."""
    from nanigpt.training.stacked_runs import plan_stacks, train_stacked

    where = {id(run): (run_dir, fp) for run, run_dir, fp in pending}
    for group in plan_stacks([run for run, _, _ in pending]):
        if len(group) == 1:
            run_dir, fp = where[id(group[0])]
            files = [run_dir / f for f in RUN_FILES]
            _train_unless_finished(group[0], inputs, run_dir, run_dir / MARKER, fp, files)
            continue
        ids = [run["run_id"] for run in group]
        log.info(f"stacking {len(group)} runs: {', '.join(ids)}")
        cpu = time.process_time()
        train_stacked(group, *inputs.values(), [where[id(run)][0] for run in group])
        cpu_s = (time.process_time() - cpu) / len(group)
        for run in group:
            run_dir, fp = where[id(run)]
            write_json_atomic(run_dir / MARKER, {"fingerprint": fp, "stacked": ids, "cpu_s": cpu_s})


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


def train_job(
    job: dict[str, Any], train_path: Path, val_path: Path, truth_path: Path, out: Path
) -> dict[str, Any]:
    """Train a job of either kind (its `kind`: `wsd` or `grouped`) into `out`, skipping what is
    finished, then write `out/done.json` {job_id, runs: {run_id: fingerprint}}."""
    kinds = {"wsd": train_wsd_job, "grouped": train_grouped_job}
    if job.get("kind") not in kinds:
        raise ValueError(
            f"job {job.get('job_id')!r}: kind {job.get('kind')!r}; expected one of {sorted(kinds)}"
        )
    inputs = {"train": Path(train_path), "val": Path(val_path), "ground_truth": Path(truth_path)}
    done = kinds[job["kind"]](job, inputs, Path(out))
    result = {"job_id": job["job_id"], "runs": done}
    write_json_atomic(Path(out) / "done.json", result)
    return result


def parse_job(text: str) -> dict[str, Any]:
    """A job from the command line: its JSON, or `@path` to a file holding it."""
    if text.startswith("@"):
        return read_json(text[1:], what="job file")
    return json.loads(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.training.jobs", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train the job's runs, skipping finished ones")
    p_train.add_argument("--job", required=True, help="job JSON, or @path to it")
    p_train.add_argument("--train", help="train shard (default: the spec's inputs.train)")
    p_train.add_argument("--val", help="val shard (default: the spec's inputs.val)")
    p_train.add_argument("--ground-truth", help="default: the spec's inputs.ground_truth")
    p_train.add_argument("--out", required=True, help="the job's folder")
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
        given = {"train": args.train, "val": args.val, "ground_truth": args.ground_truth}
        inputs = {k: v or job.get("inputs", {}).get(k) for k, v in given.items()}
        missing = [f"--{k.replace('_', '-')}" for k, v in inputs.items() if not v]
        if missing:
            raise ValueError(f"give {', '.join(missing)}, or a job spec with `inputs`")
        train_job(job, *(Path(v) for v in inputs.values()), Path(args.out))
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
