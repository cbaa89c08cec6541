# Stage 1: data. Synthetic text with a known loss floor (text + source labels + ground truth),
# or real text (the stdlib's sources, floor unknown), both in the same layout.


rule synthetic_data:
    output:
        train="data/synthetic/{dataset}/train.parquet",
        val="data/synthetic/{dataset}/val.parquet",
        truth="data/synthetic/{dataset}/ground_truth.json",
    log:
        f"{LOGS}/synthetic_data/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/synthetic_data/{{dataset}}.tsv"
    resources:
        **SMALL_JOB,
    params:
        spec=lambda w: json.dumps(config["datasets"][w.dataset], sort_keys=True),
        cmd=lambda w: commands.shell(
            commands.build_dataset(
                w.dataset, config["datasets"][w.dataset], f"data/synthetic/{w.dataset}"
            )
        ),
    message:
        "build dataset {wildcards.dataset} (text, source labels, ground truth)"
    shell:
        "{params.cmd} > {log} 2>&1"
