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
    message:
        "benchmark the Rust BPE tokenizer against the Python reference"
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
    message:
        "plot the Rust tokenizer benchmark"
    shell:
        "python -m nanigpt.plots.rust_bench --bench {input} --out {output} > {log} 2>&1"


# Core question 6: the Triton kernels against torch eager, torch.compile and Liger-Kernel. On the
# CPU, small shapes with the Triton rows in the interpreter (correctness); full shapes on a GPU.
# Not in `all`: an explicit target (`snakemake results/kernels/bench.svg`).
rule bench_kernels:
    output:
        json="results/kernels/bench.json",
        table="results/kernels/bench.parquet",
        figure=report(
            "results/kernels/bench.svg",
            category="Kernels",
            caption="../report/kernels_bench.rst",
        ),
    log:
        f"{LOGS}/bench_kernels.log",
    resources:
        **SMALL_JOB,
    message:
        "benchmark the Triton kernels against their PyTorch references"
    shell:
        "python -m nanigpt.kernels.bench --out {output.json} > {log} 2>&1"


rule bench_checkpoint:
    # Checkpoint stall (issue 20): torch.save + sha256 vs safetensors vs DCP async_save vs ours,
    # at small state-dict sizes here (seconds); the README quotes the 500 MB - 2 GB runs by hand.
    output:
        table="results/rust/checkpoint.parquet",
        figure="results/rust/checkpoint.svg",
    log:
        f"{LOGS}/bench_checkpoint.log",
    threads: 2  # the writer thread runs beside the loop thread
    params:
        sizes=" ".join(str(s) for s in config.get("bench", {}).get("checkpoint_mb", [10, 50])),
        repeats=config.get("bench", {}).get("checkpoint_repeats", 3),
    message:
        "benchmark the checkpoint writers (torch, Rust, async DCP)"
    shell:
        "python -m nanigpt.bench.checkpoint --sizes-mb {params.sizes} --repeats {params.repeats}"
        " --out {output.table} > {log} 2>&1"
