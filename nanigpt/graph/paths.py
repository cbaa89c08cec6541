"""Every path of the graph's files, written once: shards, ground truth, run folders, jobs, specs.

Serves the contract "every result is a file that Snakemake can rebuild from declared inputs"
(DESIGN.md): the rules (`workflow/rules/*.smk`), the planner and `scripts/gpu_session.py` (which
replays the graph's GPU work without Snakemake) take the place of each file from here, so a folder
renamed here is renamed everywhere. Patterns (`SHARD`, `JOB_DONE`, ...) hold Snakemake wildcards
in braces; the functions fill them for one dataset, run or job. Imports nothing heavier than the
standard library, so `scripts/gpu_session.py` reads it on a machine without the graph's packages.
"""

from __future__ import annotations

from typing import Any

SYNTHETIC = "data/synthetic"  # data/synthetic/{dataset}/{train,val}.parquet, ground_truth.json
TOKENIZER = "data/tokenizer"  # data/tokenizer/{tokdir}/tokenizer.json
TOKENS = "data/tokens"  # data/tokens/{tokdir}/{split}.bin: the token shards
RUNS = "results/runs"  # results/runs/{run_id}/: one run's files (RUN_FILES)
# Where a job of several runs trains (`nanigpt.graph.jobs`), by its kind: results/{folder}/{job_id}/,
# a folder that is not a rule's output (but for done.json), so a killed job keeps its finished runs
# and checkpoints.
JOB_FOLDERS = {"wsd": "wsd", "grouped": "jobs"}
# Settings and input lists as files (`nanigpt.graph.specs`): results/specs/{wsd,jobs}/{job_id}.json
# (`--job @`), results/specs/runs/{run_id}.json (`--run-config @`), results/specs/datasets/{name}.json
# (`--spec-json @`), results/specs/held_out.json (`--held-out @`), and the argument lists of the
# rules that read many files, results/specs/args/{rule}[/{name}].args (argparse's `@PATH`).
SPECS = "results/specs"

# Wildcard patterns of rule inputs and outputs.
SHARD = f"{TOKENS}/{{tokdir}}/{{split}}.bin"
CROSS_SHARD = f"{TOKENS}/{{tokdir}}/val_of_{{other}}.bin"  # another dataset's val text, our ids
RUN_FILES = ("config.json", "metrics.parquet", "trace.json.gz", "model.pt", "summary.json")
JOB_DONE = "results/{job_folder}/{job_id}/done.json"


def tokens_dir(config: dict, dataset: str) -> str:
    """The name of a dataset's tokens folder under its tokenizer: `{dataset}-v{vocab}`."""
    from nanigpt.graph.config import vocab_size_for  # the config's tokenizer; yaml: only here

    return f"{dataset}-v{vocab_size_for(config, dataset)}"


def tokens_folder(tokdir: str) -> str:
    """The folder of a tokenizer's shards (`tokdir` = `{dataset}-v{vocab}`)."""
    return f"{TOKENS}/{tokdir}"


def shard(config: dict, dataset: str, split: str) -> str:
    """A dataset's token shard of one split, in its tokenizer's ids."""
    return SHARD.format(tokdir=tokens_dir(config, dataset), split=split)


def cross_shard(config: dict, dataset: str, other: str) -> str:
    """Dataset `other`'s validation text encoded with `dataset`'s tokenizer."""
    return CROSS_SHARD.format(tokdir=tokens_dir(config, dataset), other=other)


def synthetic(dataset: str, name: str) -> str:
    """A file of a dataset's text folder: train.parquet, val.parquet or ground_truth.json."""
    return f"{SYNTHETIC}/{dataset}/{name}"


def ground_truth(dataset: str) -> str:
    return synthetic(dataset, "ground_truth.json")


def training_inputs(config: dict, dataset: str) -> dict[str, str]:
    """The files a run of `dataset` trains on, as a spec's `inputs` (train and val shards, ground
    truth): the trainers' `--train`, `--val`, `--ground-truth` default to them."""
    return {
        "train": shard(config, dataset, "train"),
        "val": shard(config, dataset, "val"),
        "ground_truth": ground_truth(dataset),
    }


def run_dir(run_id: str) -> str:
    return f"{RUNS}/{run_id}"


def run_outputs(pattern: str = "{run_id}") -> dict[str, str]:
    """A run folder's files by name (`config`, `metrics`, ...): a rule's `output:`."""
    return {name.split(".")[0]: f"{RUNS}/{pattern}/{name}" for name in RUN_FILES}


def run_summary(run_id: str) -> str:
    return f"{RUNS}/{run_id}/summary.json"


def job_dir(job: dict[str, Any]) -> str:
    """Where a job trains its runs: `results/wsd/{job_id}` or `results/jobs/{job_id}`."""
    return f"results/{JOB_FOLDERS[job['kind']]}/{job['job_id']}"


def job_done(job: dict[str, Any]) -> str:
    """The job's one output: written when every run of it is finished."""
    return f"{job_dir(job)}/done.json"


def job_run_dir(job: dict[str, Any], run_id: str) -> str:
    """Where a job trains one of its runs, before `publish` links it into `run_dir(run_id)`."""
    return f"{job_dir(job)}/runs/{run_id}"


def job_spec(job: dict[str, Any]) -> str:
    """A job's settings as a file, for `python -m nanigpt.training.jobs train --job @PATH`."""
    return f"{SPECS}/{JOB_FOLDERS[job['kind']]}/{job['job_id']}.json"


def run_spec(run_id: str) -> str:
    """A run's settings as a file, for `python -m nanigpt.train --run-config @PATH`."""
    return f"{SPECS}/runs/{run_id}.json"


def dataset_spec(dataset: str) -> str:
    """A dataset's definition as a file, for `python -m nanigpt.data.synthetic --spec-json @PATH`."""
    return f"{SPECS}/datasets/{dataset}.json"


def held_out_spec() -> str:
    """The held-out runs' points, for `python -m nanigpt.scaling.predict predict --held-out @PATH`."""
    return f"{SPECS}/held_out.json"


def args_list(rule: str, name: str | None = None) -> str:
    """A rule's list of input files, one a line, for a CLI's `@PATH` (argparse
    `fromfile_prefix_chars`); `name` tells apart the jobs of a rule with a wildcard."""
    return f"{SPECS}/args/{rule}.args" if name is None else f"{SPECS}/args/{rule}/{name}.args"
