# Stages 4 and 5 for budget sweeps (core question 4, Chinchilla approach 2): IsoFLOP profiles of
# the sweeps named under `isoflop.sweeps` (each declares `budgets:`, training FLOPs; nanigpt.graph.config
# derives each run's tokens), and the loss curves of every run of the headline sweep and of those:
#   results/scaling/runs_{sweep}.parquet    one row per run of the sweep (nanigpt.scaling.aggregate)
#   results/scaling/isoflop_{sweep}.json    a parabola in ln N per budget, N_opt and D_opt power laws
#   results/scaling/isoflop_{sweep}.svg     the profiles, minima and optima (nanigpt.plots.isoflop)
#   results/scaling/loss_curves_{sweep}.svg training and validation loss of each run (any sweep)
ISOFLOP = config.get("isoflop") or {}
SWEEP_NAME = "[a-z][a-z0-9_]*"  # the schema's pattern of sweep names
ISOFLOP_SWEEPS = list(ISOFLOP.get("sweeps") or [])
LOSS_CURVE_SWEEPS = list(dict.fromkeys([config["scaling"]["sweep"], *ISOFLOP_SWEEPS]))
ISOFLOP_TARGETS = [f"results/scaling/isoflop_{sweep}.svg" for sweep in ISOFLOP_SWEEPS] + [
    f"results/scaling/loss_curves_{sweep}.svg" for sweep in LOSS_CURVE_SWEEPS
]


def known_sweep(wildcards):
    if wildcards.sweep not in config["sweeps"]:
        raise WorkflowError(
            f"unknown sweep '{wildcards.sweep}': the config declares {', '.join(config['sweeps'])}"
        )
    return wildcards.sweep


def run_dirs_of_sweep(wildcards):
    return [paths.run_dir(rid) for rid in sweep_run_ids(config, known_sweep(wildcards))]


def isoflop_budgets(wildcards):
    sweep = config["sweeps"][known_sweep(wildcards)]
    if "budgets" not in sweep:
        raise WorkflowError(
            f"results/scaling/isoflop_{wildcards.sweep}: sweep '{wildcards.sweep}' lists tokens; "
            f"an IsoFLOP profile needs a sweep that declares budgets"
        )
    return " ".join(repr(float(c)) for c in sweep["budgets"])


rule aggregate_sweep:
    input:
        summaries=lambda w: summaries_of_sweep(known_sweep(w)),
    output:
        "results/scaling/runs_{sweep}.parquet",
    log:
        f"{LOGS}/aggregate_sweep/{{sweep}}.log",
    benchmark:
        f"{BENCHMARKS}/aggregate_sweep/{{sweep}}.tsv"
    wildcard_constraints:
        sweep=SWEEP_NAME,
    resources:
        **SMALL_JOB,
    params:
        args=lambda w: args_file(
            paths.args_list("aggregate_sweep", w.sweep), summaries_of_sweep(known_sweep(w))
        ),
    message:
        "collect the runs of sweep {wildcards.sweep} into one table"
    shell:
        "python -m nanigpt.scaling.aggregate --out {output} @{params.args} > {log} 2>&1"


rule isoflop_fit:
    input:
        "results/scaling/runs_{sweep}.parquet",
    output:
        "results/scaling/isoflop_{sweep}.json",
    log:
        f"{LOGS}/isoflop_fit/{{sweep}}.log",
    benchmark:
        f"{BENCHMARKS}/isoflop_fit/{{sweep}}.tsv"
    wildcard_constraints:
        sweep=SWEEP_NAME,
    resources:
        **SMALL_JOB,
    params:
        budgets=isoflop_budgets,
        loss=ISOFLOP.get("loss", "final_val_bpb"),
        n_column=ISOFLOP.get("n_column", "params_non_embedding_active"),
    message:
        "fit IsoFLOP parabolas of sweep {wildcards.sweep}"
    shell:
        "python -m nanigpt.scaling.isoflop --runs {input} --out {output} --loss {params.loss}"
        " --n-column {params.n_column} --budgets {params.budgets} > {log} 2>&1"


rule plot_isoflop:
    input:
        "results/scaling/isoflop_{sweep}.json",
    output:
        report(
            "results/scaling/isoflop_{sweep}.svg",
            category="Scaling",
            labels=lambda w: sweeps_labels(config, [w.sweep]),
            caption="../report/isoflop.rst",
        ),
    log:
        f"{LOGS}/plot_isoflop/{{sweep}}.log",
    benchmark:
        f"{BENCHMARKS}/plot_isoflop/{{sweep}}.tsv"
    wildcard_constraints:
        sweep=SWEEP_NAME,
    resources:
        **SMALL_JOB,
    params:
        title=lambda w: f"IsoFLOP profiles of sweep {w.sweep} (Chinchilla approach 2)",
    message:
        "plot the IsoFLOP profiles of a sweep"
    shell:
        "python -m nanigpt.plots.isoflop --isoflop {input} --title {params.title:q}"
        " --out {output} > {log} 2>&1"


rule plot_loss_curves:
    input:
        summaries=lambda w: summaries_of_sweep(known_sweep(w)),
        metrics=lambda w: [f"{d}/metrics.parquet" for d in run_dirs_of_sweep(w)],
    output:
        report(
            "results/scaling/loss_curves_{sweep}.svg",
            category="Scaling",
            labels=lambda w: sweeps_labels(config, [w.sweep]),
            caption="../report/loss_curves.rst",
        ),
    log:
        f"{LOGS}/plot_loss_curves/{{sweep}}.log",
    benchmark:
        f"{BENCHMARKS}/plot_loss_curves/{{sweep}}.tsv"
    wildcard_constraints:
        sweep=SWEEP_NAME,
    resources:
        **SMALL_JOB,
    params:
        args=lambda w: args_file(paths.args_list("plot_loss_curves", w.sweep), run_dirs_of_sweep(w)),
        title=lambda w: f"Loss curves of sweep {w.sweep}: every run",
    message:
        "plot the loss curves of a sweep"
    shell:
        "python -m nanigpt.plots.loss_curves --title {params.title:q} --out {output}"
        " @{params.args} > {log} 2>&1"
