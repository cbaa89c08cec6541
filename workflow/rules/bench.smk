# The Rust track: BPE training, encoding and batch loading, Python reference vs Rust vs the best
# libraries (HF tokenizers, tiktoken), measured in one job on the same machine.


rule bench_tokenizer:
    input:
        [
            f"data/synthetic/{name}/train.parquet"
            for name in config.get("bench", {}).get("datasets", [])
        ],
    output:
        table="results/rust/tokenizer.parquet",
    log:
        f"{LOGS}/bench_tokenizer.log",
    benchmark:
        f"{BENCHMARKS}/bench_tokenizer.tsv"
    threads: 2  # the benchmark times 1 thread and all threads; Snakemake caps it at --cores
    params:
        inputs=lambda w, input: " ".join(
            f"--input {name}={path}" for name, path in zip(config["bench"]["datasets"], input)
        ),
        vocab=config.get("bench", {}).get("vocab_size", 2048),
        python_mb=config.get("bench", {}).get("python_mb", 0.3),
    shell:
        "python -m nanigpt.bench.tokenizer {params.inputs} --vocab-size {params.vocab}"
        " --python-mb {params.python_mb} --out {output.table} > {log} 2>&1"


rule plot_rust_bench:
    input:
        "results/rust/tokenizer.parquet",
    output:
        report(
            "results/rust/tokenizer.svg",
            category="Rust track",
            caption="../report/rust_bench.rst",
            labels={
                "sweep": "bench",
                "arch": "-",
                "size": "-",
                "tokens": "-",
                "parallelism": "-",
                "seed": "-",
            },
        ),
    log:
        f"{LOGS}/plot_rust_bench.log",
    benchmark:
        f"{BENCHMARKS}/plot_rust_bench.tsv"
    resources:
        **SMALL_JOB,
    shell:
        "python -m nanigpt.plots.rust_bench --bench {input} --out {output} > {log} 2>&1"
