# Stage 4: every run of the headline sweep in one table, then a scaling-law fit per architecture.


rule aggregate_runs:
    input:
        summaries=summaries_of_sweep(config["scaling"]["sweep"]),
    output:
        "results/scaling/runs.parquet",
    log:
        f"{LOGS}/aggregate_runs.log",
    benchmark:
        f"{BENCHMARKS}/aggregate_runs.tsv"
    resources:
        **SMALL_JOB,
    params:
        args=lambda w: args_file(
            paths.args_list("aggregate_runs"), summaries_of_sweep(config["scaling"]["sweep"])
        ),
    message:
        "collect the scaling sweep's runs into one table"
    shell:
        "python -m nanigpt.scaling.aggregate --out {output} @{params.args} > {log} 2>&1"


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


# A pre-registered prediction (`scaling.held_out`, nanigpt.scaling.predict): the fit above, which
# sees no held-out run, forecasts each held-out run's loss with a bootstrap interval; the held-out
# runs' training jobs list prediction.json among their inputs (prediction_gate), so the graph
# trains them only after the forecast exists, and the verdict sets forecast beside measurement.
import shlex

HELD_OUT_POINTS = heldout.held_out_points(config, RUNS) if HELD_OUT else []
write_specs([(paths.held_out_spec(), HELD_OUT_POINTS)] if HELD_OUT else [])


rule predict_held_out:
    input:
        fits="results/scaling/fits.json",
        runs="results/scaling/runs.parquet",
        # The held-out runs' points as a file (`--held-out @PATH`; a change predicts again).
        points=paths.held_out_spec(),
    output:
        heldout.PREDICTION,
    log:
        f"{LOGS}/predict_held_out.log",
    resources:
        **SMALL_JOB,
    message:
        "predict the held-out runs' losses from the fit, before they train"
    shell:
        "python -m nanigpt.scaling.predict predict --fits {input.fits} --runs {input.runs}"
        " --held-out @{input.points} --out {output} > {log} 2>&1"


rule check_prediction:
    input:
        prediction=heldout.PREDICTION,
        summaries=[paths.run_summary(run_id) for run_id in HELD_OUT],
    output:
        check="results/scaling/prediction_check.json",
        figure=report(
            "results/scaling/prediction_check.svg",
            category="Scaling",
            labels=sweeps_labels(
                config, [config["scaling"].get("held_out") or config["scaling"]["sweep"]]
            ),
        ),
    log:
        f"{LOGS}/check_prediction.log",
    resources:
        **SMALL_JOB,
    params:
        args=lambda w: args_file(
            paths.args_list("check_prediction"), [paths.run_summary(r) for r in HELD_OUT]
        ),
    message:
        "set the held-out runs' measured losses beside their prediction"
    shell:
        "python -m nanigpt.scaling.predict check --prediction {input.prediction}"
        " --out {output.check} --figure {output.figure} @{params.args} > {log} 2>&1"


# The budget advisor (`scaling.advice`, nanigpt.scaling.advise): FLOP-optimal and wall-clock-
# optimal size at the configured budgets, from the fit and the runs' measured tokens/s.
rule advise:
    input:
        fits="results/scaling/fits.json",
        runs="results/scaling/runs.parquet",
    output:
        advice="results/scaling/advice.json",
        figure=report(
            "results/scaling/advice.svg",
            category="Scaling",
            labels=sweeps_labels(config, [config["scaling"]["sweep"]]),
        ),
    log:
        f"{LOGS}/advise.log",
    resources:
        **SMALL_JOB,
    params:
        flops=" ".join(f"{c:g}" for c in config["scaling"].get("advice", {}).get("flops", [])),
        arch=config["scaling"].get("advice", {}).get("arch", "dense"),
        device=(
            f"--device {shlex.quote(config['scaling']['advice']['device'])}"
            if config["scaling"].get("advice", {}).get("device")
            else ""
        ),
    message:
        "answer what to train for each compute budget (FLOP- and wall-clock-optimal)"
    shell:
        "python -m nanigpt.scaling.advise --fits {input.fits} --runs {input.runs}"
        " --flops {params.flops} --arch {params.arch} {params.device}"
        " --out {output.advice} --figure {output.figure} > {log} 2>&1"


SCALING_TARGETS = (
    ["results/scaling/prediction_check.json", "results/scaling/prediction_check.svg"]
    if HELD_OUT
    else []
) + (
    ["results/scaling/advice.json", "results/scaling/advice.svg"]
    if config["scaling"].get("advice")
    else []
)
