# Shared lookups: the runs the config declares, and the paths of each stage's outputs.
from nanigpt.graph import commands, paths
from nanigpt.graph.config import (
    profiled_run_ids,
    resolve_runs,
    run_settings_json,
    sweep_run_ids,
)
from nanigpt.parallel.setting import world_size
from nanigpt.graph.runtable import run_labels, study_version, sweeps_labels
from nanigpt.graph.specs import write_args, write_spec
from nanigpt.scaling import predict as heldout

RUNS = resolve_runs(config)
# Runs the fit must predict before they train (`scaling.held_out`, nanigpt.scaling.predict).
try:
    HELD_OUT = heldout.held_out_run_ids(config, RUNS)
except heldout.HeldOutError as error:
    raise WorkflowError(f"invalid config: {error}") from None
LOGS = "results/logs"
BENCHMARKS = "results/benchmarks"  # one TSV per job: wall s, peak RSS (MB), I/O (nanigpt.graph.runtable show)


wildcard_constraints:
    dataset="[a-z][a-z0-9]*",
    tokdir="[a-z][a-z0-9]*-v[0-9]+",
    split="train|val",
    run_id="[A-Za-z0-9_]+",


def write_specs(specs):
    """Write each (path, settings) of `specs` as a spec (`--job @PATH`, `--run-config @PATH`, ...),
    rewritten only when the settings change (nanigpt.graph.specs). Called while the rule files are
    read, before Snakemake builds its DAG (a file an input function wrote could already be cached
    as missing: MissingInputException with two targets); the rule that reads a spec lists it as
    an input, so a change of the settings reruns that job and nothing else."""
    for path, settings in specs:
        write_spec(path, settings)


def args_file(path, args):
    """`path`, holding `args` one a line, for a CLI's `@PATH` (a rule's list of input files, kept
    out of its command line), rewritten only when they change. A param, not an input: the list is
    the rule's inputs, whose change already reruns it, and a param's file is written before the job
    runs without Snakemake checking that it exists while it plans."""
    write_args(path, args)
    return path


def labels_of_run(wildcards):
    """`snakemake --report` labels of a run's figure (sweep, arch, size, tokens, ...)."""
    return run_labels(config, run_of(wildcards))


def run_of(wildcards):
    if wildcards.run_id not in RUNS:
        raise WorkflowError(
            f"unknown run id '{wildcards.run_id}': the config declares {', '.join(RUNS)}"
        )
    return RUNS[wildcards.run_id]


def shard_path(run, split):
    return paths.shard(config, run["dataset"], split)


def prediction_gate(run_ids):
    """A training job's extra input: the prediction file when it trains a held-out run, so
    the graph runs the prediction first (DESIGN.md: a prediction comes before its run)."""
    return heldout.gate(HELD_OUT, run_ids)


def summaries_of_sweep(sweep):
    return [paths.run_summary(run_id) for run_id in sweep_run_ids(config, sweep)]


# Resources of each job, read by cluster executors (workflow/profiles/slurm) and ignored by a
# local run. Training asks for one task per process of the run's parallelism (dp*fsdp*tp*ep,
# `nanigpt.parallel.setting.world_size`), each with `training.threads` CPUs, and one GPU per process when
# `training.device` is cuda; a multi-process run is marked `mpi` so the SLURM jobstep does not wrap
# it in `srun -n1`, and `python -m nanigpt.launch` places the processes (srun + torchrun). The rules
# that scripts/gpu_session.py replays (data, tokenizer, shards, training, specialization) take
# their command line, a `cmd` param, from `nanigpt.graph.commands`. Everything else is a small CPU job. Override any value per rule with the profile's `set-resources`.
TRAIN_ON_GPU = config["training"]["device"] == "cuda"
TRAIN_MEM_MB_PER_PROCESS = 16000 if TRAIN_ON_GPU else 2000
TRAIN_RUNTIME_MIN = 720 if TRAIN_ON_GPU else 60
SMALL_JOB = {"cpus_per_task": 1, "mem_mb": 2000, "runtime": 30}


def train_tasks(wildcards):
    return world_size(run_of(wildcards)["parallelism"])


def train_resources():
    """The `resources:` of a training job; values are functions of the run's wildcards."""
    resources = {
        "tasks": train_tasks,
        "mpi": lambda w: "srun" if train_tasks(w) > 1 else None,
        "cpus_per_task": config["training"]["threads"],
        # sbatch's --mem is per node; memory per CPU stays right however the tasks are placed.
        "mem_mb_per_cpu": -(-TRAIN_MEM_MB_PER_PROCESS // config["training"]["threads"]),
        "mem_mb": lambda w: TRAIN_MEM_MB_PER_PROCESS * train_tasks(w),
        "runtime": TRAIN_RUNTIME_MIN,
    }
    if TRAIN_ON_GPU:
        resources["gpu"] = train_tasks
        resources["tasks_per_gpu"] = 1
    return resources
