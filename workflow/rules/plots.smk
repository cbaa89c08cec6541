# Stage 5: the figures. The headline: loss vs training FLOPs, dense and MoE, fitted frontiers,
# and the data's exact entropy floor.


rule plot_moe_vs_dense:
    input:
        runs="results/scaling/runs.parquet",
        fits="results/scaling/fits.json",
        truth=paths.ground_truth(config["sweeps"][config["scaling"]["sweep"]]["dataset"]),
    output:
        report(
            "results/scaling/moe_vs_dense.svg",
            category="Scaling",
            caption="../report/moe_vs_dense.rst",
            labels=sweeps_labels(config, [config["scaling"]["sweep"]]),
        ),
    log:
        f"{LOGS}/plot_moe_vs_dense.log",
    benchmark:
        f"{BENCHMARKS}/plot_moe_vs_dense.tsv"
    resources:
        **SMALL_JOB,
    message:
        "draw the headline: loss vs training compute, dense and MoE, fitted frontiers ({output})"
    shell:
        "python -m nanigpt.plots.moe_vs_dense --runs {input.runs} --fits {input.fits}"
        " --ground-truth {input.truth} --out {output} > {log} 2>&1"


rule plot_fit_residuals:
    input:
        runs="results/scaling/runs.parquet",
        fits="results/scaling/fits.json",
    output:
        report(
            "results/scaling/fit_residuals.svg",
            category="Scaling",
            labels=sweeps_labels(config, [config["scaling"]["sweep"]]),
        ),
    log:
        f"{LOGS}/plot_fit_residuals.log",
    benchmark:
        f"{BENCHMARKS}/plot_fit_residuals.tsv"
    resources:
        **SMALL_JOB,
    message:
        "draw the scaling fit's residuals per run ({output})"
    shell:
        "python -m nanigpt.plots.fit_residuals --runs {input.runs} --fits {input.fits}"
        " --out {output} > {log} 2>&1"
