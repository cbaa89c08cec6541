# Shared lookups: the runs the config declares, and the paths of each stage's outputs.
import json

from nanigpt.config import resolve_runs, run_settings_json, sweep_run_ids, tokens_dir

RUNS = resolve_runs(config)
LOGS = "results/logs"


wildcard_constraints:
    dataset="[a-z][a-z0-9]*",
    tokdir="[a-z][a-z0-9]*-v[0-9]+",
    split="train|val",
    run_id="[A-Za-z0-9_]+",


def run_of(wildcards):
    if wildcards.run_id not in RUNS:
        raise WorkflowError(
            f"unknown run id '{wildcards.run_id}': the config declares {', '.join(RUNS)}"
        )
    return RUNS[wildcards.run_id]


def shard_path(run, split):
    return f"data/tokens/{tokens_dir(config, run['dataset'])}/{split}.bin"


def summaries_of_sweep(sweep):
    return [f"results/runs/{run_id}/summary.json" for run_id in sweep_run_ids(config, sweep)]
