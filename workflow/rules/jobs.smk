# Stage 3b: jobs that train several runs in one process (nanigpt.graph.jobs plans them, one
# planner for both kinds; nanigpt.training.jobs trains either kind, the job's spec naming it):
# - wsd: a sweep with `cooldown:`; one job per (dataset, arch, seed, parallelism, training
#   settings; and size in a sweep of FLOP budgets) trains its stable runs and each budget's
#   cooldown branch into results/wsd/{job_id}/;
# - grouped: a sweep with `grouped: true`; one job per (dataset, size, seed, parallelism) of world
#   size 1 trains its runs in turn into results/jobs/{job_id}/; with training.stack_replicas one
#   job per (dataset, size, arch, parallelism) trains its seeds and lrs as stacked replicas.
# A job's folder is deliberately not an output (its checkpoints and finished runs are not), so a
# killed job's rerun skips what is finished. A tiny job per run links its files into
# results/runs/{run_id}/, the same outputs as train_run's.
from nanigpt.graph.jobs import job_of, job_run_ids, job_spec, plan_jobs, what_a_job_trains

JOBS = plan_jobs(config, RUNS)
JOB_OF = job_of(JOBS)
write_specs((paths.job_spec(job), job_spec(config, job)) for job in JOBS.values())


def job_named(wildcards):
    job = JOBS.get(wildcards.job_id)
    if job is None or paths.JOB_FOLDERS[job["kind"]] != wildcards.job_folder:
        raise WorkflowError(
            f"unknown job 'results/{wildcards.job_folder}/{wildcards.job_id}': the config declares "
            f"{', '.join(paths.job_dir(j) for j in JOBS.values()) or 'none'}"
        )
    return job


def job_shard(wildcards, split):
    return paths.shard(config, job_named(wildcards)["dataset"], split)


rule train_job:
    input:
        # The job's settings as a file (the command line names it; a changed spec reruns the job).
        spec=lambda w: paths.job_spec(job_named(w)),
        train=lambda w: job_shard(w, "train"),
        val=lambda w: job_shard(w, "val"),
        truth=lambda w: paths.ground_truth(job_named(w)["dataset"]),
        prediction=lambda w: prediction_gate(job_run_ids(job_named(w))),
    output:
        paths.JOB_DONE,
    log:
        f"{LOGS}/train_job/{{job_folder}}/{{job_id}}.log",
    benchmark:
        f"{BENCHMARKS}/train_job/{{job_folder}}/{{job_id}}.tsv"
    wildcard_constraints:
        job_folder="|".join(paths.JOB_FOLDERS.values()),
    threads: config["training"]["threads"]
    resources:
        **({"gpu": 1} if TRAIN_ON_GPU else {}),
        cpus_per_task=config["training"]["threads"],
        mem_mb=TRAIN_MEM_MB_PER_PROCESS,
        runtime=TRAIN_RUNTIME_MIN,
    params:
        what=lambda w: what_a_job_trains(job_named(w)),
    message:
        "train {params.what}"
    shell:
        "python -m nanigpt.training.jobs train --job @{input.spec}"
        " --out results/{wildcards.job_folder}/{wildcards.job_id} > {log} 2>&1"


rule publish_job_run:
    input:
        lambda w: paths.job_done(JOBS[JOB_OF[w.run_id]]),
    output:
        **paths.run_outputs(),
    wildcard_constraints:
        run_id="|".join(JOB_OF) or "(?!)",
    resources:
        **SMALL_JOB,
    params:
        run=lambda w: run_settings_json(run_of(w)),
        src=lambda w: paths.job_run_dir(JOBS[JOB_OF[w.run_id]], w.run_id),
        dst=lambda w: paths.run_dir(w.run_id),
    message:
        "publish run {wildcards.run_id} from its job's folder"
    shell:
        "python -m nanigpt.training.jobs publish --src {params.src} --dst {params.dst}"


ruleorder: publish_job_run > train_run


# Does a cooldown branch match a cosine run of equal length (Hägele et al. 2024)? Seed by seed,
# over the sweeps `wsd_check.sweeps` (one cosine, one WSD, same sizes, tokens and seeds).
def wsd_check_summaries():
    return [s for sweep in config["wsd_check"]["sweeps"] for s in summaries_of_sweep(sweep)]


rule wsd_vs_cosine:
    input:
        summaries=lambda w: wsd_check_summaries(),
    output:
        "results/scaling/wsd_vs_cosine.json",
    log:
        f"{LOGS}/wsd_vs_cosine.log",
    resources:
        **SMALL_JOB,
    params:
        args=lambda w: args_file(paths.args_list("wsd_vs_cosine"), wsd_check_summaries()),
    message:
        "compare WSD cooldown branches with cosine runs of equal length"
    shell:
        "python -m nanigpt.scaling.wsd_check --out {output} @{params.args} > {log} 2>&1"
