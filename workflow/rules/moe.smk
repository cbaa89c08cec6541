# Stage 6 (core question 3): expert specialization against the known sources of the mixture, load
# balance against capacity, and where MoE overtakes dense. Reads `moe_analysis` from the config:
#   sweeps: every MoE run of these gets specialization.json (+ counts.parquet) and a heatmap;
#   control_sweep: the same MoE trained on a single-source dataset (the MI figure's baseline);
#   eval_dataset: whose validation text scores specialization (default: each run's own; the
#     control is then scored on the mixture's text, encoded with the control's tokenizer);
#   load: {name: [sweeps]} -> results/moe/load_vs_capacity_{name}.svg;
#   crossover: {name: [sweeps]} -> results/moe/crossover_{name}.svg (+ crossover_fits_{name}.json);
#   experts: {name: [sweeps]} -> results/moe/experts_{name}.svg (MI and load CV vs expert count);
#   knowledge: {name: [sweeps]} -> results/moe/gain_vs_{name}.svg (+ .json): MoE and wide dense
#     minus dense against the datasets' knowledge bits per parameter, with seed ranges;
#   max_tokens: tokens analysed per model; bootstrap: replicates of the crossover fits.
# Snapshots over training come from `training.snapshot_every` (the trainer writes them).
from nanigpt.graph.config import (
    moe_analysed_runs,
    moe_eval_dataset,
    moe_mi_run_ids,
    sweeps_run_ids,
)

MOE_ANALYSIS = config.get("moe_analysis") or {}
MOE_SWEEPS = list(MOE_ANALYSIS.get("sweeps") or [])
MOE_CONTROL_SWEEP = MOE_ANALYSIS.get("control_sweep")
MOE_LOAD = dict(MOE_ANALYSIS.get("load") or {})
MOE_CROSSOVER = dict(MOE_ANALYSIS.get("crossover") or {})
MOE_EXPERTS = dict(MOE_ANALYSIS.get("experts") or {})
MOE_KNOWLEDGE = dict(MOE_ANALYSIS.get("knowledge") or {})


def moe_val_shard(wildcards):
    """The labelled shard a run is scored on, encoded with the run's own tokenizer."""
    run = run_of(wildcards)
    other = moe_eval_dataset(config, run)
    if other == run["dataset"]:
        return shard_path(run, "val")
    return paths.cross_shard(config, run["dataset"], other)


def spec_files(run_ids):
    return [f"results/moe/{rid}/specialization.json" for rid in run_ids]


def moe_specs_of(sweeps):
    """The specialization files of the MoE runs of `sweeps`."""
    return spec_files(sweeps_run_ids(config, sweeps, moe_only=True))


def summaries_of_sweeps(sweeps):
    """The summaries of every run (dense and MoE) of `sweeps`."""
    return [paths.run_summary(rid) for rid in sweeps_run_ids(config, sweeps, moe_only=False)]


def truths_of_sweeps(sweeps):
    """The ground truth of each dataset `sweeps` train on."""
    return sorted({paths.ground_truth(config["sweeps"][s]["dataset"]) for s in sweeps})


MOE_TARGETS = (
    [f"results/moe/{rid}/heatmap.svg" for rid in moe_analysed_runs(config)]
    + (["results/moe/mi_vs_step.svg"] if MOE_SWEEPS else [])
    + [f"results/moe/load_vs_capacity_{name}.svg" for name in MOE_LOAD]
    + [f"results/moe/crossover_{name}.svg" for name in MOE_CROSSOVER]
    + [f"results/moe/experts_{name}.svg" for name in MOE_EXPERTS]
    + [f"results/moe/gain_vs_{name}.svg" for name in MOE_KNOWLEDGE]
)


rule encode_val_of_dataset:
    # Another dataset's validation text in this tokenizer's ids (the control scored on the mixture).
    input:
        tokenizer="data/tokenizer/{tokdir}/tokenizer.json",
        text=paths.synthetic("{other}", "val.parquet"),
    output:
        paths.CROSS_SHARD,
    log:
        f"{LOGS}/encode_val_of_dataset/{{tokdir}}-{{other}}.log",
    benchmark:
        f"{BENCHMARKS}/encode_val_of_dataset/{{tokdir}}-{{other}}.tsv"
    wildcard_constraints:
        other="[a-z][a-z0-9]*",
    resources:
        **SMALL_JOB,
    params:
        impl=config["tokenizer"]["impl"],
        cmd=lambda w, input, output: commands.shell(
            commands.encode_tokens(
                input.tokenizer, input.text, config["tokenizer"]["impl"], output[0]
            )
        ),
    message:
        "encode {wildcards.other}'s validation text with tokenizer {wildcards.tokdir}"
    shell:
        "{params.cmd} > {log} 2>&1"


rule moe_specialization:
    input:
        summary=paths.run_summary("{run_id}"),
        val=moe_val_shard,
    output:
        json="results/moe/{run_id}/specialization.json",
        counts="results/moe/{run_id}/counts.parquet",
    log:
        f"{LOGS}/moe_specialization/{{run_id}}.log",
    benchmark:
        f"{BENCHMARKS}/moe_specialization/{{run_id}}.tsv"
    resources:
        **SMALL_JOB,
    params:
        max_tokens=MOE_ANALYSIS.get("max_tokens", 65536),
        cmd=lambda w, input, output: commands.shell(
            commands.moe_specialization(
                paths.run_dir(w.run_id),
                input.val,
                output.json,
                MOE_ANALYSIS.get("max_tokens", 65536),
                counts=output.counts,
            )
        ),
    message:
        "score the experts of run {wildcards.run_id} against the known sources"
    shell:
        "{params.cmd} > {log} 2>&1"


rule moe_heatmap:
    input:
        "results/moe/{run_id}/specialization.json",
    output:
        report(
            "results/moe/{run_id}/heatmap.svg",
            category="Runs",
            subcategory="expert x source heatmap",
            labels=labels_of_run,
        ),
    log:
        f"{LOGS}/moe_heatmap/{{run_id}}.log",
    benchmark:
        f"{BENCHMARKS}/moe_heatmap/{{run_id}}.tsv"
    resources:
        **SMALL_JOB,
    message:
        "draw the expert x source heatmap of run {wildcards.run_id}"
    shell:
        "python -m nanigpt.plots.moe heatmap --spec {input} --out {output} > {log} 2>&1"


rule moe_mi_vs_step:
    input:
        specs=spec_files(moe_mi_run_ids(config)),
    output:
        report(
            "results/moe/mi_vs_step.svg",
            category="MoE specialization",
            labels=sweeps_labels(config, [MOE_CONTROL_SWEEP] if MOE_CONTROL_SWEEP else []),
        ),
    log:
        f"{LOGS}/moe_mi_vs_step.log",
    benchmark:
        f"{BENCHMARKS}/moe_mi_vs_step.tsv"
    resources:
        **SMALL_JOB,
    params:
        args=lambda w: args_file(
            paths.args_list("moe_mi_vs_step"), spec_files(moe_mi_run_ids(config))
        ),
    message:
        "plot expert-source mutual information over training"
    shell:
        "python -m nanigpt.plots.moe mi --spec @{params.args} --out {output} > {log} 2>&1"


rule moe_load_vs_capacity:
    input:
        specs=lambda w: moe_specs_of(MOE_LOAD[w.name]),
    output:
        report(
            "results/moe/load_vs_capacity_{name}.svg",
            category="MoE specialization",
            labels=lambda w: sweeps_labels(config, MOE_LOAD[w.name]),
        ),
    log:
        f"{LOGS}/moe_load_vs_capacity/{{name}}.log",
    benchmark:
        f"{BENCHMARKS}/moe_load_vs_capacity/{{name}}.tsv"
    wildcard_constraints:
        name="|".join(MOE_LOAD) or "(?!)",
    resources:
        **SMALL_JOB,
    params:
        args=lambda w: args_file(
            paths.args_list("moe_load_vs_capacity", w.name), moe_specs_of(MOE_LOAD[w.name])
        ),
    message:
        "plot expert load against capacity ({wildcards.name})"
    shell:
        "python -m nanigpt.plots.moe load --spec @{params.args} --out {output} > {log} 2>&1"


rule moe_experts:
    input:
        specs=lambda w: moe_specs_of(MOE_EXPERTS[w.name]),
    output:
        report(
            "results/moe/experts_{name}.svg",
            category="MoE specialization",
            labels=lambda w: sweeps_labels(config, MOE_EXPERTS[w.name]),
        ),
    log:
        f"{LOGS}/moe_experts/{{name}}.log",
    benchmark:
        f"{BENCHMARKS}/moe_experts/{{name}}.tsv"
    wildcard_constraints:
        name="|".join(MOE_EXPERTS) or "(?!)",
    resources:
        **SMALL_JOB,
    params:
        args=lambda w: args_file(
            paths.args_list("moe_experts", w.name), moe_specs_of(MOE_EXPERTS[w.name])
        ),
    message:
        "plot specialization against the expert count ({wildcards.name})"
    shell:
        "python -m nanigpt.plots.moe experts --spec @{params.args} --out {output} > {log} 2>&1"


rule moe_crossover:
    input:
        summaries=lambda w: summaries_of_sweeps(MOE_CROSSOVER[w.name]),
    output:
        svg=report(
            "results/moe/crossover_{name}.svg",
            category="MoE specialization",
            labels=lambda w: sweeps_labels(config, MOE_CROSSOVER[w.name]),
        ),
        fits="results/moe/crossover_fits_{name}.json",
    log:
        f"{LOGS}/moe_crossover/{{name}}.log",
    benchmark:
        f"{BENCHMARKS}/moe_crossover/{{name}}.tsv"
    wildcard_constraints:
        name="|".join(MOE_CROSSOVER) or "(?!)",
    resources:
        **SMALL_JOB,
    params:
        args=lambda w: args_file(
            paths.args_list("moe_crossover", w.name), summaries_of_sweeps(MOE_CROSSOVER[w.name])
        ),
        loss=config["scaling"]["loss"],
        bootstrap=MOE_ANALYSIS.get("bootstrap", 20),
    message:
        "fit where MoE overtakes dense ({wildcards.name})"
    shell:
        "python -m nanigpt.plots.moe crossover --summaries @{params.args} --out {output.svg}"
        " --fits-out {output.fits} --loss {params.loss} --bootstrap {params.bootstrap} > {log} 2>&1"


rule moe_gain_vs_data:
    # Both lists go to the CLI as one argument file: `--summaries ... --ground-truth ...`.
    input:
        summaries=lambda w: summaries_of_sweeps(MOE_KNOWLEDGE[w.name]),
        truths=lambda w: truths_of_sweeps(MOE_KNOWLEDGE[w.name]),
    output:
        svg=report(
            "results/moe/gain_vs_{name}.svg",
            caption="../report/gain_vs_data.rst",
            category="MoE specialization",
        ),
        json="results/moe/gain_vs_{name}.json",
    log:
        f"{LOGS}/moe_gain_vs_data/{{name}}.log",
    wildcard_constraints:
        name="|".join(MOE_KNOWLEDGE) or "(?!)",
    resources:
        **SMALL_JOB,
    params:
        args=lambda w: args_file(
            paths.args_list("moe_gain_vs_data", w.name),
            [
                "--summaries",
                *summaries_of_sweeps(MOE_KNOWLEDGE[w.name]),
                "--ground-truth",
                *truths_of_sweeps(MOE_KNOWLEDGE[w.name]),
            ],
        ),
        loss=config["scaling"]["loss"],
    message:
        "plot the MoE gain against the data's knowledge bits ({wildcards.name})"
    shell:
        "python -m nanigpt.plots.moe_gain @{params.args} --out {output.svg}"
        " --json-out {output.json}"
        " --loss {params.loss} > {log} 2>&1"


rule moe_figures:
    # `snakemake moe_figures`: every MoE analysis output of the configured sweeps.
    input:
        MOE_TARGETS,
    message:
        "build every MoE figure"
