"""Warmup-stable-decay sweeps: one stable run per (dataset, arch, size, seed), a cooldown per budget.

Serves core question 4 (scaling fits that are determined). A sweep with `cooldown: f` trains, per
(dataset, arch, size, seed, parallelism), one stable-phase run at constant learning rate (after the
warmup) that keeps its training state at each budget's branch point, and gives each token budget D
the result of a cooldown of f*D tokens (linear decay to `min_lr_frac`) branched from there
(`nanigpt.schedule`; Hägele et al. 2024, arXiv 2405.18392). B budgets cost the largest budget's
stable phase plus the cooldowns instead of the sum of all budgets.

Each budget is a run of its own (`<run_id>` ends in `_wsd`), whose outputs land in
`results/runs/<run_id>/` exactly as a cosine run's, so aggregation, fits and figures read them
unchanged. Where the work runs was chosen by measurement (docs/interfaces.md, "WSD jobs"): a
training process pays ~4.4 CPU-seconds of imports and first-call set-up on this 2-core machine,
while a cooldown of the CPU default's headline costs 0.05-1 s, so all stable runs and cooldowns of
one (dataset, arch, seed, parallelism, training settings) train in one job, `results/wsd/<job_id>/`,
and a tiny job per budget (`publish`, no torch import) hard-links the budget's files into
`results/runs/<run_id>/` for Snakemake (`nanigpt.jobs`, which also runs grouped plain runs). A
sweep of FLOP `budgets:` (IsoFLOP) gets a job per size as well: there every size costs about the
same, the largest budget's in each, and one job of all sizes would be the graph's longest chain.

Resume: every finished stable run (`stable/<stable_id>/stable.json`) and cooldown
(`runs/<run_id>/branch.json`) records the fingerprint of its settings and inputs, and a rerun of
the job skips what is finished with the same fingerprint: a killed cooldown reruns alone (from its
own rolling checkpoint if it wrote one, else from the stable run's checkpoint at its branch point),
a killed stable run resumes from its rolling checkpoint. On the CPU a branch is bit-identical to a
WSD run of the same budget trained straight through (tests/test_wsd.py).

    python -m nanigpt.wsd train --job JSON_OR_@PATH --train train.bin --val val.bin \\
        --ground-truth ground_truth.json --out results/wsd/JOB_ID
    python -m nanigpt.wsd publish --src results/wsd/JOB_ID/runs/RUN_ID --dst results/runs/RUN_ID
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from nanigpt.io import write_json_atomic
from nanigpt.jobs import RUN_FILES, finished, job_cli, publish  # noqa: F401 (publish re-exported)
from nanigpt.schedule import branch_step

log = logging.getLogger("nanigpt.wsd")

RUN_SUFFIX = "_wsd"
__all__ = ["RUN_FILES", "branch_step_of", "is_wsd_run", "job_of", "plan_jobs", "publish", "run_job"]
# Settings a stable run does not depend on: its branches' length, schedule and cooldown.
_BRANCH_ONLY = ("run_id", "tokens", "sweeps", "budgets")
_BRANCH_ONLY_TRAINING = ("schedule", "decay_frac")


def _digest(obj: Any, length: int) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:length]


def _steps(run: dict[str, Any]) -> int:
    t = run["training"]
    return math.ceil(run["tokens"] / (t["seq_len"] * t["batch_size"] * t["grad_accum"]))


def branch_step_of(run: dict[str, Any]) -> int:
    """The stable-run step a WSD budget run branches from."""
    t = run["training"]
    return branch_step(_steps(run), t["warmup_steps"], t["decay_frac"])


def _stable_key(run: dict[str, Any]) -> dict[str, Any]:
    key = {k: v for k, v in run.items() if k not in _BRANCH_ONLY}
    key["training"] = {k: v for k, v in run["training"].items() if k not in _BRANCH_ONLY_TRAINING}
    return key


def is_wsd_run(run: dict[str, Any]) -> bool:
    return run["run_id"].endswith(RUN_SUFFIX) or f"{RUN_SUFFIX}_" in run["run_id"]


def plan_jobs(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The WSD jobs of a config's runs (`nanigpt.config.resolve_runs`): `{job_id: job}`.

    A job holds every stable run of one (sweep, dataset, arch, parallelism, seed), the sweep being
    the first that lists a budget run, and of one size too where that sweep declares FLOP
    `budgets:` (module docstring); a stable run holds every WSD budget run of that sweep with
    its settings, and runs to the latest branch point among them. `run_job` of a job is `{"job_id", "dataset",
    "stables": [{"run": stable run settings, "branches": [budget run settings]}]}`; `job_of`
    maps each budget run id to its job id.
    """
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
        entry["branches"].append({k: v for k, v in run.items() if k not in ("sweeps", "budgets")})
    jobs: dict[str, dict[str, Any]] = {}
    for digest, entry in stables.items():
        key, branches = entry["key"], sorted(entry["branches"], key=lambda r: r["tokens"])
        t = key["training"]
        tokens_per_step = t["seq_len"] * t["batch_size"] * t["grad_accum"]
        stable = copy.deepcopy(key)
        stable["training"]["schedule"] = "constant"
        stable["tokens"] = max(branch_step_of(b) for b in branches) * tokens_per_step
        seed = t["seed"]
        stable["run_id"] = (
            f"{key['dataset']}_{key['arch']}_{key['size']}_{key['parallelism_name']}_seed{seed}"
            f"_stable_{digest[:6]}"
        )
        size = f"_{key['size']}" if entry["budgets"] else ""  # a budget sweep: a job per size
        job_id = (
            f"{entry['sweep']}_{key['dataset']}_{key['arch']}{size}_{key['parallelism_name']}"
            f"_seed{seed}"
        )
        job = jobs.setdefault(job_id, {"job_id": job_id, "dataset": key["dataset"], "stables": []})
        job["stables"].append({"run": stable, "branches": branches})
    for job in jobs.values():
        job["stables"].sort(key=lambda s: s["run"]["run_id"])
    return jobs


def job_of(jobs: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {
        b["run_id"]: jid for jid, job in jobs.items() for s in job["stables"] for b in s["branches"]
    }


# --- training a job -----------------------------------------------------------------------------


def run_job(
    job: dict[str, Any], train_path: Path, val_path: Path, truth_path: Path, out: Path
) -> dict[str, Any]:
    """Train a job's stable runs and cooldowns into `out`, skipping what is already finished."""
    from nanigpt import checkpoint
    from nanigpt.train import train

    inputs = {"train": Path(train_path), "val": Path(val_path), "ground_truth": Path(truth_path)}
    done: dict[str, str] = {}
    for entry in job["stables"]:
        stable, branches = entry["run"], entry["branches"]
        stable_dir = out / "stable" / stable["run_id"]
        kept = {
            branch_step_of(b): stable_dir / f"branch_step{branch_step_of(b):07d}.pt"
            for b in branches
        }
        stable_fp = checkpoint.run_fingerprint(stable, inputs)
        marker = stable_dir / "stable.json"
        if not finished(marker, stable_fp, *kept.values()):
            log.info(
                f"{stable['run_id']}: stable phase to step {max(kept)} (branches {sorted(kept)})"
            )
            cpu = time.process_time()
            train(stable, *inputs.values(), stable_dir, keep_checkpoints=kept)
            write_json_atomic(
                marker,
                {
                    "fingerprint": stable_fp,
                    "branch_steps": sorted(kept),
                    "cpu_s": time.process_time() - cpu,
                },
            )
        for branch in branches:
            branch_dir = out / "runs" / branch["run_id"]
            branch_fp = checkpoint.run_fingerprint(branch, inputs)
            branch_marker = branch_dir / "branch.json"
            if not finished(branch_marker, branch_fp, *(branch_dir / f for f in RUN_FILES)):
                step = branch_step_of(branch)
                cpu = time.process_time()
                train(branch, *inputs.values(), branch_dir, branch_from=(kept[step], stable_fp))
                write_json_atomic(
                    branch_marker,
                    {
                        "fingerprint": branch_fp,
                        "stable": stable["run_id"],
                        "branch_step": step,
                        "cpu_s": time.process_time() - cpu,
                    },
                )
            done[branch["run_id"]] = branch_fp
    result = {"job_id": job["job_id"], "runs": done}
    write_json_atomic(out / "done.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    return job_cli(
        argv, "python -m nanigpt.wsd", __doc__.split("\n")[0], run_job, "results/wsd/JOB_ID"
    )


if __name__ == "__main__":
    sys.exit(main())
