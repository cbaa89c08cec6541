# Stage 6 (core question 3): expert specialization against the known sources of the mixture, load
# balance against capacity, and where MoE overtakes dense. Reads `moe_analysis` from the config:
#   sweeps: MoE sweeps to analyse (every MoE run: specialization.json + heatmap; per sweep: the
#           load-balance and crossover figures); control_sweep: the same MoE trained on a
#           single-source dataset; eval_dataset: whose validation text scores specialization
#           (default: each run's own; the control then needs the mixture's text, encoded with the
#           control's tokenizer); max_tokens: tokens analysed per model; bootstrap: crossover fits.
# Snapshots over training come from `training.snapshot_every` (the trainer writes them).
MOE_ANALYSIS = config.get("moe_analysis") or {}
MOE_SWEEPS = list(MOE_ANALYSIS.get("sweeps") or [])
MOE_CONTROL_SWEEP = MOE_ANALYSIS.get("control_sweep")

for _sweep in MOE_SWEEPS + ([MOE_CONTROL_SWEEP] if MOE_CONTROL_SWEEP else []):
    if _sweep not in config["sweeps"]:
        raise WorkflowError(
            f"moe_analysis: unknown sweep '{_sweep}' (defined: {', '.join(config['sweeps'])})"
        )


def moe_run_ids(sweep):
    """The MoE runs of a sweep (dense runs have no router to analyse)."""
    return [rid for rid in sweep_run_ids(config, sweep) if RUNS[rid]["arch_kind"] == "moe"]


def moe_eval_dataset(run):
    return MOE_ANALYSIS.get("eval_dataset") or run["dataset"]


def moe_val_shard(wildcards):
    """The labelled shard a run is scored on, encoded with the run's own tokenizer."""
    run = run_of(wildcards)
    other = moe_eval_dataset(run)
    if other == run["dataset"]:
        return shard_path(run, "val")
    return f"data/tokens/{tokens_dir(config, run['dataset'])}/val_of_{other}.bin"


def moe_mi_run_ids():
    """Control runs and the mixture runs of the same (arch, size, tokens), else every MoE run."""
    control = moe_run_ids(MOE_CONTROL_SWEEP) if MOE_CONTROL_SWEEP else []
    keys = {(RUNS[r]["arch"], RUNS[r]["size"], RUNS[r]["tokens"]) for r in control}
    mixture = [r for s in MOE_SWEEPS for r in moe_run_ids(s)]
    matched = [r for r in mixture if (RUNS[r]["arch"], RUNS[r]["size"], RUNS[r]["tokens"]) in keys]
    return sorted(set((matched or mixture) + control))


def spec_files(run_ids):
    return [f"results/moe/{rid}/specialization.json" for rid in run_ids]


MOE_TARGETS = (
    [f"results/moe/{rid}/heatmap.svg" for s in MOE_SWEEPS for rid in moe_run_ids(s)]
    + [f"results/moe/load_vs_capacity_{s}.svg" for s in MOE_SWEEPS]
    + [f"results/moe/crossover_{s}.svg" for s in MOE_SWEEPS]
    + (["results/moe/mi_vs_step.svg"] if MOE_SWEEPS else [])
)


rule encode_val_of_dataset:
    # Another dataset's validation text in this tokenizer's ids (the control scored on the mixture).
    input:
        tokenizer="data/tokenizer/{tokdir}/tokenizer.json",
        text="data/synthetic/{other}/val.parquet",
    output:
        "data/tokens/{tokdir}/val_of_{other}.bin",
    wildcard_constraints:
        other="[a-z][a-z0-9]*",
    params:
        impl=config["tokenizer"]["impl"],
    resources:
        **SMALL_JOB,
    log:
        f"{LOGS}/encode_val_of_dataset/{{tokdir}}-{{other}}.log",
    shell:
        "python -m nanigpt.data.tokenize encode --tokenizer {input.tokenizer} --input {input.text}"
        " --impl {params.impl} --out {output} > {log} 2>&1"


rule moe_specialization:
    input:
        summary="results/runs/{run_id}/summary.json",
        val=moe_val_shard,
    output:
        json="results/moe/{run_id}/specialization.json",
        counts="results/moe/{run_id}/counts.parquet",
    params:
        max_tokens=MOE_ANALYSIS.get("max_tokens", 65536),
    resources:
        **SMALL_JOB,
    log:
        f"{LOGS}/moe_specialization/{{run_id}}.log",
    shell:
        "python -m nanigpt.measure.specialization --run-dir results/runs/{wildcards.run_id}"
        " --val {input.val} --out {output.json} --counts {output.counts}"
        " --max-tokens {params.max_tokens} > {log} 2>&1"


rule moe_heatmap:
    input:
        "results/moe/{run_id}/specialization.json",
    output:
        "results/moe/{run_id}/heatmap.svg",
    resources:
        **SMALL_JOB,
    log:
        f"{LOGS}/moe_heatmap/{{run_id}}.log",
    shell:
        "python -m nanigpt.plots.moe heatmap --spec {input} --out {output} > {log} 2>&1"


rule moe_mi_vs_step:
    input:
        spec_files(moe_mi_run_ids()),
    output:
        "results/moe/mi_vs_step.svg",
    resources:
        **SMALL_JOB,
    log:
        f"{LOGS}/moe_mi_vs_step.log",
    shell:
        "python -m nanigpt.plots.moe mi --spec {input} --out {output} > {log} 2>&1"


rule moe_load_vs_capacity:
    input:
        lambda w: spec_files(moe_run_ids(w.sweep)),
    output:
        "results/moe/load_vs_capacity_{sweep}.svg",
    resources:
        **SMALL_JOB,
    log:
        f"{LOGS}/moe_load_vs_capacity/{{sweep}}.log",
    shell:
        "python -m nanigpt.plots.moe load --spec {input} --out {output} > {log} 2>&1"


rule moe_crossover:
    input:
        lambda w: summaries_of_sweep(w.sweep),
    output:
        svg="results/moe/crossover_{sweep}.svg",
        fits="results/moe/crossover_fits_{sweep}.json",
    params:
        loss=config["scaling"]["loss"],
        bootstrap=MOE_ANALYSIS.get("bootstrap", 20),
    resources:
        **SMALL_JOB,
    log:
        f"{LOGS}/moe_crossover/{{sweep}}.log",
    shell:
        "python -m nanigpt.plots.moe crossover --summaries {input} --out {output.svg}"
        " --fits-out {output.fits} --loss {params.loss} --bootstrap {params.bootstrap} > {log} 2>&1"


rule moe_figures:
    # `snakemake moe_figures`: every MoE analysis output of the configured sweeps.
    input:
        MOE_TARGETS,
