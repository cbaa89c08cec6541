# Stage 1: synthetic data with a known loss floor (text + source labels + ground truth).


rule synthetic_data:
    output:
        train="data/synthetic/{dataset}/train.parquet",
        val="data/synthetic/{dataset}/val.parquet",
        truth="data/synthetic/{dataset}/ground_truth.json",
    params:
        spec=lambda w: json.dumps(config["datasets"][w.dataset], sort_keys=True),
    log:
        f"{LOGS}/synthetic_data/{{dataset}}.log",
    shell:
        "python -m nanigpt.data.synthetic --name {wildcards.dataset} --spec-json {params.spec:q}"
        " --out data/synthetic/{wildcards.dataset} > {log} 2>&1"
