# The Rust track: BPE training, encoding and batch loading, Python reference vs Rust vs the best
# libraries (HF tokenizers, tiktoken), measured in one job on the same machine; the checkpoint
# stall and the trace step breakdown; and the verdict that reads all three tables.
BENCH = config.get("bench", {})
BENCH_TARGETS = (
    [
        "results/rust/tokenizer.svg",
        "results/rust/checkpoint.svg",
        "results/rust/trace.svg",
        "results/rust/verdict.svg",
    ]
    if "bench" in config
    else []
)


rule bench_tokenizer:
    input:
        [paths.synthetic(name, "train.parquet") for name in BENCH.get("datasets", [])],
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
        vocab=BENCH.get("vocab_size", 2048),
        python_mb=BENCH.get("python_mb", 0.3),
    message:
        "Rust track: BPE training, encoding and loading, Python vs Rust vs HF tokenizers and tiktoken"
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
        "draw the tokenizer benchmark ({output})"
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
        "time the Triton kernels against torch eager, torch.compile and Liger ({output.json})"
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
    benchmark:
        f"{BENCHMARKS}/bench_checkpoint.tsv"
    threads: 2  # the writer thread runs beside the loop thread
    params:
        sizes=" ".join(str(s) for s in BENCH.get("checkpoint_mb", [10, 50])),
        repeats=BENCH.get("checkpoint_repeats", 3),
    message:
        "Rust track: checkpoint stall at {params.sizes} MB, torch.save vs safetensors vs DCP vs ours"
    shell:
        "python -m nanigpt.bench.checkpoint --sizes-mb {params.sizes} --repeats {params.repeats}"
        " --out {output.table} > {log} 2>&1"


rule bench_trace:
    # The trace step breakdown (issue 20): Python vs Rust (vs HTA's parse when it is installed) on
    # a real trace of the scaling sweep, replicated to bench.trace_mb MB of JSON.
    input:
        trace=lambda w: paths.run_outputs(profiled_run_ids(config, config["scaling"]["sweep"])[0])[
            "trace"
        ],
    output:
        table="results/rust/trace.parquet",
        figure="results/rust/trace.svg",
    log:
        f"{LOGS}/bench_trace.log",
    benchmark:
        f"{BENCHMARKS}/bench_trace.tsv"
    resources:
        **SMALL_JOB,
    params:
        sizes=" ".join(str(s) for s in BENCH.get("trace_mb", [1.0])),
        repeats=BENCH.get("trace_repeats", 2),
    message:
        "Rust track: time the step breakdown of a {params.sizes} MB trace, Python vs Rust"
    shell:
        "python -m nanigpt.bench.trace --trace {input.trace} --sizes-mb {params.sizes}"
        " --repeats {params.repeats} --out {output.table} > {log} 2>&1"


rule bench_verdict:
    # The seed's expected outcome, stage by stage, from the benchmark tables above (no typed-in
    # numbers); the orchestration rows stay empty unless its table is given by hand
    # (`python -m nanigpt.bench.orchestration`, README's Rust track).
    input:
        tokenizer="results/rust/tokenizer.parquet",
        checkpoint="results/rust/checkpoint.parquet",
        trace="results/rust/trace.parquet",
    output:
        table="results/rust/verdict.parquet",
        figure=report("results/rust/verdict.svg", category="Rust track"),
    log:
        f"{LOGS}/bench_verdict.log",
    benchmark:
        f"{BENCHMARKS}/bench_verdict.tsv"
    resources:
        **SMALL_JOB,
    message:
        "Rust track: the verdict per stage (tokenizer, loader, checkpoint, trace tables)"
    shell:
        "python -m nanigpt.bench.verdict --tokenizer {input.tokenizer}"
        " --checkpoint {input.checkpoint} --trace {input.trace} --out {output.table} > {log} 2>&1"
