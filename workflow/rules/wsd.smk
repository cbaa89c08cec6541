# Stage 3b: WSD sweeps (a sweep with `cooldown:`). One job per (dataset, arch, seed, parallelism,
# training settings; and size in a sweep of FLOP budgets) trains its stable runs and each
# budget's cooldown branch into results/wsd/{job_id}/ (nanigpt.wsd; checkpoints and finished branches there are deliberately not
# outputs, so a killed job's rerun skips what is finished). A tiny job per budget links its files
# into results/runs/{run_id}/, the same outputs as train_run's.
from nanigpt.wsd import job_of, plan_jobs

WSD_JOBS = plan_jobs(RUNS)
WSD_JOB_OF = job_of(WSD_JOBS)


def wsd_job(wildcards):
    if wildcards.job_id not in WSD_JOBS:
        raise WorkflowError(
            f"unknown WSD job '{wildcards.job_id}': the config declares {', '.join(WSD_JOBS)}"
        )
    return WSD_JOBS[wildcards.job_id]


def wsd_shard(wildcards, split):
    return f"data/tokens/{tokens_dir(config, wsd_job(wildcards)['dataset'])}/{split}.bin"


rule train_wsd_job:
    input:
        train=lambda w: wsd_shard(w, "train"),
        val=lambda w: wsd_shard(w, "val"),
        truth=lambda w: f"data/synthetic/{wsd_job(w)['dataset']}/ground_truth.json",
        prediction=lambda w: prediction_gate(
            b["run_id"] for s in wsd_job(w)["stables"] for b in s["branches"]
        ),
    output:
        "results/wsd/{job_id}/done.json",
    log:
        f"{LOGS}/train_wsd_job/{{job_id}}.log",
    benchmark:
        f"{BENCHMARKS}/train_wsd_job/{{job_id}}.tsv"
    threads: config["training"]["threads"]
    resources:
        **({"gpu": 1} if TRAIN_ON_GPU else {}),
        cpus_per_task=config["training"]["threads"],
        mem_mb=TRAIN_MEM_MB_PER_PROCESS,
        runtime=TRAIN_RUNTIME_MIN,
    params:
        job=lambda w: json.dumps(wsd_job(w), sort_keys=True, separators=(",", ":")),
    shell:
        "python -m nanigpt.wsd train --job {params.job:q} --train {input.train} --val {input.val}"
        " --ground-truth {input.truth} --out results/wsd/{wildcards.job_id} > {log} 2>&1"


rule publish_wsd_run:
    input:
        lambda w: f"results/wsd/{WSD_JOB_OF[w.run_id]}/done.json",
    output:
        config="results/runs/{run_id}/config.json",
        metrics="results/runs/{run_id}/metrics.parquet",
        trace="results/runs/{run_id}/trace.json.gz",
        model="results/runs/{run_id}/model.pt",
        summary="results/runs/{run_id}/summary.json",
    wildcard_constraints:
        run_id="[A-Za-z0-9_]*_wsd(_[A-Za-z0-9_]+)?",
    resources:
        **SMALL_JOB,
    params:
        run=lambda w: run_settings_json(run_of(w)),
        job=lambda w: WSD_JOB_OF[w.run_id],
    shell:
        "python -m nanigpt.wsd publish --src results/wsd/{params.job}/runs/{wildcards.run_id}"
        " --dst results/runs/{wildcards.run_id}"


ruleorder: publish_wsd_run > train_run


# Does a cooldown branch match a cosine run of equal length (Hägele et al. 2024)? Seed by seed,
# over the sweeps `wsd_check.sweeps` (one cosine, one WSD, same sizes, tokens and seeds).
rule wsd_vs_cosine:
    input:
        lambda w: [s for sweep in config["wsd_check"]["sweeps"] for s in summaries_of_sweep(sweep)],
    output:
        "results/scaling/wsd_vs_cosine.json",
    log:
        f"{LOGS}/wsd_vs_cosine.log",
    resources:
        **SMALL_JOB,
    shell:
        "python -m nanigpt.scaling.wsd_check --out {output} {input} > {log} 2>&1"
