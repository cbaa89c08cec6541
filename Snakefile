# naniGPT's experiment graph: synthetic data -> Rust BPE -> token shards -> training runs ->
# aggregate -> scaling fits -> figures. Every target is a file rebuilt from declared inputs.
# Logic lives in nanigpt/ (each rule calls a `python -m nanigpt....` CLI); this file loads and
# validates the config, then includes one rule file per stage.
#
# `snakemake --lint` warnings kept on purpose:
# - "Specify a conda environment or container for each rule": every rule runs in the one uv
#   environment locked by uv.lock (`uv run snakemake ...`); per-rule conda envs would duplicate
#   that lock and drift from it.
# - "Mixed rules and functions in same snakefile" (tokenize, profile, isoflop, moe .smk): the
#   helper functions are the input lookups of their own stage's rules, kept beside them; the logic
#   they call lives in nanigpt/.
import sys
from pathlib import Path

from snakemake.utils import min_version

from nanigpt.graph import snakelock
from nanigpt.graph.config import ConfigError, load_config, validate_config

min_version("9.0")

# `--configfile X.yaml` replaces the embedded default as a whole; without it the default beside
# this Snakefile is used.
try:
    config = (
        validate_config(config, source="--configfile")
        if config
        else load_config(Path(workflow.basedir) / "workflow" / "config" / "default.yaml")
    )
except ConfigError as error:
    raise WorkflowError(f"invalid config: {error}") from None

# Locks left by a Snakemake killed with SIGKILL are removed when their owner is provably dead
# (nanigpt/graph/snakelock.py); the rerun of a killed run then resumes from its checkpoint
# (profiles/default sets rerun-incomplete).
for owner in snakelock.clear_stale_locks():
    print(f"removed the stale locks of a killed Snakemake ({owner})", file=sys.stderr)


onstart:
    snakelock.claim()


onsuccess:
    snakelock.release()


onerror:
    snakelock.release()


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tokenize.smk"
include: "workflow/rules/jobs.smk"
include: "workflow/rules/train.smk"  # after the job planner: it trains the runs no job does
include: "workflow/rules/profile.smk"
include: "workflow/rules/scaling.smk"
include: "workflow/rules/plots.smk"
include: "workflow/rules/isoflop.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/moe.smk"


rule all:
    default_target: True
    input:
        "results/scaling/moe_vs_dense.svg",
        "results/scaling/fit_residuals.svg",
        SCALING_TARGETS,
        ISOFLOP_TARGETS,
        "results/profile/summary.parquet",
        "results/profile/breakdown.svg",
        BENCH_TARGETS,
        MOE_TARGETS,
    message:
        "build every target of the config"


# Every run of the config, trained: what a GPU machine runs, also one with torch alone and the
# wheels of scripts/device_wheels.sh (README, "Snakemake on a GPU machine without uv"); the
# aggregates, fits and figures are built back here from the runs it returns.
rule trained:
    input:
        [paths.run_summary(run_id) for run_id in RUNS],
    message:
        "train every run of the config (nothing after the runs)"
