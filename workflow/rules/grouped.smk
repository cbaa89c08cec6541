# Stage 3c: grouped plain runs (a sweep with `grouped: true`). One job per (dataset, size, seed,
# parallelism) of world size 1 trains its runs in turn in one process into results/jobs/{job_id}/
# (nanigpt.jobs; like a WSD job's folder, deliberately not an output, so a killed job's rerun skips
# the finished runs and resumes the unfinished one from its checkpoint). A tiny job per run links
# its files into results/runs/{run_id}/, the same outputs as train_run's.
from nanigpt.jobs import group_of, plan_groups

GROUP_JOBS = plan_groups(config, RUNS)
GROUP_OF = group_of(GROUP_JOBS)


def group_job(wildcards):
    if wildcards.job_id not in GROUP_JOBS:
        raise WorkflowError(
            f"unknown grouped job '{wildcards.job_id}': the config declares "
            f"{', '.join(GROUP_JOBS) or 'none'}"
        )
    return GROUP_JOBS[wildcards.job_id]


def group_shard(wildcards, split):
    return f"data/tokens/{tokens_dir(config, group_job(wildcards)['dataset'])}/{split}.bin"


rule train_grouped_job:
    input:
        train=lambda w: group_shard(w, "train"),
        val=lambda w: group_shard(w, "val"),
        truth=lambda w: f"data/synthetic/{group_job(w)['dataset']}/ground_truth.json",
        prediction=lambda w: prediction_gate(r["run_id"] for r in group_job(w)["runs"]),
    output:
        "results/jobs/{job_id}/done.json",
    log:
        f"{LOGS}/train_grouped_job/{{job_id}}.log",
    benchmark:
        f"{BENCHMARKS}/train_grouped_job/{{job_id}}.tsv"
    threads: config["training"]["threads"]
    resources:
        **({"gpu": 1} if TRAIN_ON_GPU else {}),
        cpus_per_task=config["training"]["threads"],
        mem_mb=TRAIN_MEM_MB_PER_PROCESS,
        runtime=TRAIN_RUNTIME_MIN,
    params:
        job=lambda w: json.dumps(group_job(w), sort_keys=True, separators=(",", ":")),
    shell:
        "python -m nanigpt.jobs train --job {params.job:q} --train {input.train} --val {input.val}"
        " --ground-truth {input.truth} --out results/jobs/{wildcards.job_id} > {log} 2>&1"


rule publish_grouped_run:
    input:
        lambda w: f"results/jobs/{GROUP_OF[w.run_id]}/done.json",
    output:
        config="results/runs/{run_id}/config.json",
        metrics="results/runs/{run_id}/metrics.parquet",
        trace="results/runs/{run_id}/trace.json.gz",
        model="results/runs/{run_id}/model.pt",
        summary="results/runs/{run_id}/summary.json",
    wildcard_constraints:
        run_id="|".join(GROUP_OF) or "(?!)",
    resources:
        **SMALL_JOB,
    params:
        run=lambda w: run_settings_json(run_of(w)),
        job=lambda w: GROUP_OF[w.run_id],
    shell:
        "python -m nanigpt.jobs publish --src results/jobs/{params.job}/runs/{wildcards.run_id}"
        " --dst results/runs/{wildcards.run_id}"


ruleorder: publish_grouped_run > train_run
