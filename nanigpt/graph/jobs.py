"""Jobs that train several runs in one process: which runs each job trains (the planning half).

A training process pays ~4.7 CPU-seconds of start-up on a 2-core machine (importing torch and the
trainer 2.8 s, torch.optim importing `torch._dynamo` on its first step 2.0 s), as much as a whole
small run trains; docs/interfaces.md ("WSD jobs") records the measurement. Two kinds of job
therefore train several runs each, planned here, without torch, for the Snakefile:

- `wsd`: a WSD sweep's stable runs and cooldown branches (Hägele et al. 2024, arXiv 2405.18392).
  A job holds every stable run of one (sweep, dataset, arch, parallelism, seed), the sweep being
  the first that lists a budget run, and of one size too where that sweep declares FLOP `budgets:`
  (there every size costs about the same, the largest budget's in each, and one job of all sizes
  would be the graph's longest chain). A stable run holds every WSD budget run of that sweep with
  its settings, and runs at constant learning rate to the latest branch point among them.
- `grouped`: every plain run (not WSD, world size 1) listed by a sweep with `grouped: true`
  trains in the job of its (dataset, size, seed, parallelism), across those sweeps: the runs of a
  job share their input shards, and splitting by size and seed keeps the jobs about as long as
  each other and lets them run side by side. A run's id, settings and outputs are those of its
  own `train_run` job; only where it trains changes. With `training.stack_replicas: true` a
  grouped job holds instead every run of one (dataset, size, arch, parallelism), all its seeds,
  lrs and budgets, id `{dataset}_{size}_{arch}_{parallelism}_stacked`, and carries `stack: true`
  and `alone`: the runs whose profiler trace (the profile reports of `scaling.sweep`) or weight
  snapshots (the MoE MI-over-training figure) the graph reads, which train alone with the
  trainer; the job runner trains the others as stacked replicas (`nanigpt.training.stacked_runs`;
  seeds of one shape can only stack inside one job). WSD jobs do not stack: their cooldown
  branches start from the stable run's checkpoints, which a stacked run does not write.

`plan_jobs(config, runs)` gives both kinds, `{job_id: job}`; each job carries its `kind`, and
`nanigpt.training.jobs` trains either kind from it. `job_of` maps every run a job trains to the
job. The job's folder is `nanigpt.graph.paths.job_dir`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from nanigpt.graph import paths
from nanigpt.graph.config import (
    ConfigError,
    moe_mi_run_ids,
    profiled_run_ids,
    stack_replicas,
)
from nanigpt.parallel.setting import world_size
from nanigpt.training.config import BOOKKEEPING, branch_step_of, run_settings, tokens_per_step

RUN_SUFFIX = "_wsd"  # a WSD budget run's id ends in it (`nanigpt.graph.config._as_wsd_branch`)
# Settings a stable run does not depend on: its branches' length, schedule and cooldown.
_BRANCH_ONLY = ("run_id", "tokens", *BOOKKEEPING)
_BRANCH_ONLY_TRAINING = ("schedule", "decay_frac")


def _digest(obj: Any, length: int) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:length]


def is_wsd_run(run: dict[str, Any]) -> bool:
    return run["run_id"].endswith(RUN_SUFFIX) or f"{RUN_SUFFIX}_" in run["run_id"]


def _stable_key(run: dict[str, Any]) -> dict[str, Any]:
    key = {k: v for k, v in run.items() if k not in _BRANCH_ONLY}
    key["training"] = {k: v for k, v in run["training"].items() if k not in _BRANCH_ONLY_TRAINING}
    return key


def plan_wsd_jobs(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The WSD jobs of a config's runs: `{job_id: {"kind": "wsd", "job_id", "dataset",
    "stables": [{"run": stable run settings, "branches": [budget run settings]}]}}`."""
    stables: dict[str, dict[str, Any]] = {}
    for run in runs.values():
        if not is_wsd_run(run):
            continue
        key = _stable_key(run)
        sweep = (run.get("sweeps") or ["wsd"])[0]  # a probe's branches train in the probe's job
        entry = stables.setdefault(
            _digest([key, sweep], 16),
            {
                "key": key,
                "branches": [],
                "sweep": sweep,
                "budgets": sweep in run.get("budgets", {}),
            },
        )
        entry["branches"].append(run_settings(run))
    jobs: dict[str, dict[str, Any]] = {}
    for digest, entry in stables.items():
        key, branches = entry["key"], sorted(entry["branches"], key=lambda r: r["tokens"])
        stable = copy.deepcopy(key)
        stable["training"]["schedule"] = "constant"
        stable["tokens"] = max(branch_step_of(b) for b in branches) * tokens_per_step(
            key["training"]
        )
        seed = key["training"]["seed"]
        stable["run_id"] = (
            f"{key['dataset']}_{key['arch']}_{key['size']}_{key['parallelism_name']}_seed{seed}"
            f"_stable_{digest[:6]}"
        )
        size = f"_{key['size']}" if entry["budgets"] else ""  # a budget sweep: a job per size
        job_id = (
            f"{entry['sweep']}_{key['dataset']}_{key['arch']}{size}_{key['parallelism_name']}"
            f"_seed{seed}"
        )
        job = jobs.setdefault(
            job_id, {"kind": "wsd", "job_id": job_id, "dataset": key["dataset"], "stables": []}
        )
        job["stables"].append({"run": stable, "branches": branches})
    for job in jobs.values():
        job["stables"].sort(key=lambda s: s["run"]["run_id"])
    return jobs


def grouped_sweeps(config: dict[str, Any]) -> list[str]:
    return [name for name, sweep in config["sweeps"].items() if sweep.get("grouped")]


def stacking_exempt(config: dict[str, Any]) -> set[str]:
    """The runs that train alone even in a stacked job: those whose profiler trace a profile
    report reads (`profiled_run_ids` of `scaling.sweep`, where profiling is on) and those whose
    weight snapshots the MoE MI-over-training figure reads (where `training.snapshot_every` is
    set). A stacked run writes an empty trace, null step times and no snapshots: its K replicas
    share every step (`nanigpt.training.stacked_runs`)."""
    exempt: set[str] = set()
    sweep = (config.get("scaling") or {}).get("sweep")
    if config["profile"].get("enabled", True) and sweep:
        exempt |= set(profiled_run_ids(config, sweep))
    if config["training"].get("snapshot_every") and (config.get("moe_analysis") or {}).get(
        "sweeps"
    ):
        exempt |= set(moe_mi_run_ids(config))
    return exempt


def plan_grouped_jobs(
    config: dict[str, Any], runs: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The grouped jobs of a config's runs: `{job_id: {"kind": "grouped", "job_id", "dataset",
    "runs": [run settings, as train_run gets them]}}` (and `"versions": {run_id:
    "sweep=version,..."}` where a sweep declares `version:`), runs in config order; job id
    `{dataset}_{size}_{parallelism}_seed{seed}`; with `training.stack_replicas`, `"stack": true`,
    `"alone": [run ids]` and job id `{dataset}_{size}_{arch}_{parallelism}_stacked` (module
    docstring)."""
    opted = set(grouped_sweeps(config))
    stack = stack_replicas(config)
    alone = stacking_exempt(config) if stack else set()
    jobs: dict[str, dict[str, Any]] = {}
    for run in runs.values():
        if not opted & set(run.get("sweeps", ())) or is_wsd_run(run):
            continue
        if world_size(run["parallelism"]) != 1:
            continue
        if stack:
            job_id = (
                f"{run['dataset']}_{run['size']}_{run['arch']}_{run['parallelism_name']}_stacked"
            )
        else:
            job_id = f"{run['dataset']}_{run['size']}_{run['parallelism_name']}_seed{run['seed']}"
        job = jobs.setdefault(
            job_id, {"kind": "grouped", "job_id": job_id, "dataset": run["dataset"], "runs": []}
        )
        if stack:
            job["stack"] = True
            job.setdefault("alone", [])
            if run["run_id"] in alone:
                job["alone"].append(run["run_id"])
        job["runs"].append(run_settings(run))
        versions = [
            f"{sweep}={config['sweeps'][sweep]['version']}"
            for sweep in sorted(run["sweeps"])
            if config["sweeps"][sweep].get("version") is not None
        ]  # as nanigpt.graph.runtable.study_version: a bumped `version:` retrains the sweep's runs
        if versions:
            job.setdefault("versions", {})[run["run_id"]] = ",".join(versions)
    return jobs


def plan_jobs(config: dict[str, Any], runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every job of several runs a config declares, both kinds, `{job_id: job}` (WSD first)."""
    wsd, grouped = plan_wsd_jobs(runs), plan_grouped_jobs(config, runs)
    clash = sorted(set(wsd) & set(grouped))
    if clash:
        raise ConfigError(
            f"job id(s) {clash} name both a WSD job and a grouped job; rename the WSD sweep or "
            f"the dataset so that they differ"
        )
    return {**wsd, **grouped}


def job_spec(config: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    """What `paths.job_spec(job)` holds: the job, and the input files it trains on (`inputs`:
    train and val shards, ground truth), so that its command line needs only the spec and `--out`."""
    return {**job, "inputs": paths.training_inputs(config, job["dataset"])}


def run_spec(config: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """What `paths.run_spec(run_id)` holds: the run's settings (`run_settings`) and, as a job's
    spec does, the input files it trains on (`inputs`, which `python -m nanigpt.train` takes out
    before it reads the settings)."""
    return {**run_settings(run), "inputs": paths.training_inputs(config, run["dataset"])}


def job_run_ids(job: dict[str, Any]) -> list[str]:
    """The ids of the runs a job publishes: a WSD job's branches, a grouped job's runs."""
    if job["kind"] == "wsd":
        return [b["run_id"] for s in job["stables"] for b in s["branches"]]
    return [run["run_id"] for run in job["runs"]]


def job_of(jobs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each run a job trains, mapped to its job id."""
    return {rid: jid for jid, job in jobs.items() for rid in job_run_ids(job)}


def _counted(values: list[Any], noun: str) -> str:
    distinct = list(dict.fromkeys(values))
    return f"{len(distinct)} {noun}{'s' if len(distinct) != 1 else ''}"


def what_a_job_trains(job: dict[str, Any]) -> str:
    """The job in words, for its rule's `message:`: "5 sizes x 4 budgets of dense on mix, seed 0
    (WSD)" or "6 runs (2 archs x 3 budgets) of size s1 on mix, seed 0"."""
    if job["kind"] == "wsd":
        branches = [b for s in job["stables"] for b in s["branches"]]
        first = branches[0]
        return (
            f"{_counted([b['size'] for b in branches], 'size')} x "
            f"{_counted([b['tokens'] for b in branches], 'budget')} of "
            f"{', '.join(dict.fromkeys(b['arch'] for b in branches))} on {first['dataset']}, "
            f"seed {first['training']['seed']} (WSD: {len(job['stables'])} stable run(s) and their cooldowns)"
        )
    runs = job["runs"]
    first = runs[0]
    if job.get("stack"):
        return (
            f"{len(runs)} runs ({_counted([r['tokens'] for r in runs], 'budget')} x "
            f"{_counted([r['training']['seed'] for r in runs], 'seed')} x "
            f"{_counted([r['training']['lr'] for r in runs], 'lr')}) of {first['arch']} "
            f"{first['size']} on {first['dataset']}, stacked replicas, one process"
        )
    return (
        f"{len(runs)} runs ({_counted([r['arch'] for r in runs], 'arch')} x "
        f"{_counted([r['tokens'] for r in runs], 'budget')}) of size {first['size']} on "
        f"{first['dataset']}, seed {first['training']['seed']}, one process"
    )
