# Stage 4b: where does the time of a step go? The device's measured ceilings, then one profile
# report per run (phase and kernel breakdown, MFU, roofline, memory), then the headline sweep's.
from nanigpt.graph.plancache import hardware_slug  # no torch import on a CPU machine

HARDWARE_DEVICE = hardware_slug(config["training"]["device"])
HARDWARE_JSON = f"results/hardware/{HARDWARE_DEVICE}.json"
PROFILE_FILES = (
    "breakdown.parquet", "trace_breakdown.parquet", "trace_breakdown.json", "memory.json",
    "breakdown.svg", "roofline.svg", "memory.svg", "report.json",
)  # fmt: skip


def profile_reports_of_sweep(sweep):
    return [f"results/profile/{run_id}/report.json" for run_id in profiled_run_ids(config, sweep)]


rule hardware_ceilings:
    output:
        "results/hardware/{device}.json",
    log:
        f"{LOGS}/hardware_ceilings/{{device}}.log",
    benchmark:
        f"{BENCHMARKS}/hardware_ceilings/{{device}}.tsv"
    threads: config["training"]["threads"]
    resources:
        **(SMALL_JOB | ({"gpu": 1} if TRAIN_ON_GPU else {})),
    params:
        device=config["training"]["device"],
    message:
        "measure this machine's matmul and copy ceilings ({wildcards.device})"
    shell:
        "python -m nanigpt.analysis.ceilings --device {params.device} --threads {threads}"
        " --out {output} > {log} 2>&1"


rule profile_run:
    input:
        **{k: v for k, v in paths.run_outputs().items() if k != "model"},
        hardware=HARDWARE_JSON,
    output:
        [  # the run's SVGs are rows of the report's run browser (category Runs)
            (
                report(
                    f"results/profile/{{run_id}}/{name}",
                    category="Runs",
                    subcategory=f"profile: {name}",
                    labels=labels_of_run,
                )
                if name.endswith(".svg")
                else f"results/profile/{{run_id}}/{name}"
            )
            for name in PROFILE_FILES
        ],
    log:
        f"{LOGS}/profile_run/{{run_id}}.log",
    benchmark:
        f"{BENCHMARKS}/profile_run/{{run_id}}.tsv"
    resources:
        **SMALL_JOB,
    message:
        "profile run {wildcards.run_id}: step breakdown, MFU, roofline"
    shell:
        f"python -m nanigpt.analysis.report --run-dir {paths.RUNS}/{{wildcards.run_id}}"
        " --hardware {input.hardware} --out-dir results/profile/{wildcards.run_id} > {log} 2>&1"


rule profile_summary:
    input:
        reports=profile_reports_of_sweep(config["scaling"]["sweep"]),
    output:
        summary="results/profile/summary.parquet",
        chart=report(
            "results/profile/breakdown.svg",
            category="Where time goes",
            labels=sweeps_labels(config, [config["scaling"]["sweep"]]),
        ),
    log:
        f"{LOGS}/profile_summary.log",
    benchmark:
        f"{BENCHMARKS}/profile_summary.tsv"
    resources:
        **SMALL_JOB,
    params:
        args=lambda w: args_file(
            paths.args_list("profile_summary"),
            profile_reports_of_sweep(config["scaling"]["sweep"]),
        ),
    message:
        "collect every run's profile into one table"
    shell:
        "python -m nanigpt.analysis.report aggregate --reports @{params.args}"
        " --out {output.summary} --chart {output.chart} > {log} 2>&1"
