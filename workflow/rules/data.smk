# Stage 1: data. Synthetic text with a known loss floor (text + source labels + ground truth),
# or real text (the stdlib's sources, floor unknown), both in the same layout.


def dataset_of(wildcards):
    if wildcards.dataset not in config["datasets"]:
        raise WorkflowError(
            f"unknown dataset '{wildcards.dataset}': the config declares "
            f"{', '.join(config['datasets'])}"
        )
    return config["datasets"][wildcards.dataset]


write_specs((paths.dataset_spec(name), spec) for name, spec in config["datasets"].items())


rule synthetic_data:
    input:
        # The dataset's definition as a file (`--spec-json @PATH`; a change rebuilds the dataset).
        spec=lambda w: paths.dataset_spec(w.dataset),
    output:
        train=paths.synthetic("{dataset}", "train.parquet"),
        val=paths.synthetic("{dataset}", "val.parquet"),
        truth=paths.ground_truth("{dataset}"),
    log:
        f"{LOGS}/synthetic_data/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/synthetic_data/{{dataset}}.tsv"
    resources:
        **SMALL_JOB,
    params:
        cmd=lambda w, input: commands.shell(
            commands.build_dataset(
                w.dataset,
                dataset_of(w),
                f"{paths.SYNTHETIC}/{w.dataset}",
                spec_file=input.spec,
            )
        ),
    message:
        "build dataset {wildcards.dataset} (text, source labels, ground truth)"
    shell:
        "{params.cmd} > {log} 2>&1"
