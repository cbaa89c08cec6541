# Stage 3: one training run per (dataset, arch, size, tokens, parallelism) of every sweep.
# The run's own settings are its params, so changing them reruns this run and nothing else.
# With a world size > 1 (dp*fsdp*tp*ep) nanigpt.launch starts torchrun (srun + torchrun under
# SLURM); with 1 it runs the trainer in its own process. checkpoint.pt, comm.json and snapshots/
# are deliberately not outputs: Snakemake must not delete the checkpoint of a failed or killed run
# (the rerun resumes from it), and comm.json exists only for distributed runs.

from nanigpt.graph.jobs import run_spec

# The runs no job of several runs trains. The constraint names them, so that no file of a job's run
# is also matched by this rule (a candidate job per file, costing the dry run its time).
PLAIN_RUN_IDS = [rid for rid in RUNS if rid not in JOB_OF]
write_specs((paths.run_spec(rid), run_spec(config, RUNS[rid])) for rid in PLAIN_RUN_IDS)


rule train_run:
    input:
        # The run's settings and input files as a file (`--run-config @PATH`; a change reruns it).
        spec=lambda w: paths.run_spec(w.run_id),
        train=lambda w: shard_path(run_of(w), "train"),
        val=lambda w: shard_path(run_of(w), "val"),
        truth=lambda w: paths.ground_truth(run_of(w)["dataset"]),
        prediction=lambda w: prediction_gate([w.run_id]),
    output:
        **paths.run_outputs(),
    log:
        f"{LOGS}/train_run/{{run_id}}.log",
    benchmark:
        f"{BENCHMARKS}/train_run/{{run_id}}.tsv"
    wildcard_constraints:
        run_id="|".join(PLAIN_RUN_IDS) or "(?!)",
    threads: config["training"]["threads"]
    resources:
        **train_resources(),
    params:
        run=lambda w: run_settings_json(run_of(w)),
        world=train_tasks,
        version=lambda w: study_version(config, run_of(w)),  # the sweeps' `version:` keys
        cmd=lambda w, input: commands.shell(
            commands.train_run(
                f"@{input.spec}",
                train_tasks(w),
                train=None,  # the spec's inputs: input.train, input.val, input.truth
                val=None,
                truth=None,
                out=paths.run_dir(w.run_id),
            )
        ),
    message:
        "train run {wildcards.run_id} ({params.world} process(es))"
    shell:
        "{params.cmd} > {log} 2>&1"
