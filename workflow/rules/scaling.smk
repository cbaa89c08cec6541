# Stage 4: every run of the headline sweep in one table, then a scaling-law fit per architecture.


rule aggregate_runs:
    input:
        summaries_of_sweep(config["scaling"]["sweep"]),
    output:
        "results/scaling/runs.parquet",
    log:
        f"{LOGS}/aggregate_runs.log",
    benchmark:
        f"{BENCHMARKS}/aggregate_runs.tsv"
    resources:
        **SMALL_JOB,
    message:
        "collect the scaling sweep's runs into one table"
    shell:
        "python -m nanigpt.scaling.aggregate --out {output} {input} > {log} 2>&1"


rule fit_scaling:
    input:
        "results/scaling/runs.parquet",
    output:
        "results/scaling/fits.json",
    log:
        f"{LOGS}/fit_scaling.log",
    benchmark:
        f"{BENCHMARKS}/fit_scaling.tsv"
    resources:
        **SMALL_JOB,
    params:
        loss=config["scaling"]["loss"],
        n_column=config["scaling"]["n_column"],
        bootstrap=config["scaling"]["bootstrap"],
        seed=config["scaling"]["seed"],
    message:
        "fit the scaling laws with their uncertainty"
    shell:
        "python -m nanigpt.scaling.fit --runs {input} --out {output} --loss {params.loss}"
        " --n-column {params.n_column} --bootstrap {params.bootstrap} --seed {params.seed}"
        " > {log} 2>&1"
