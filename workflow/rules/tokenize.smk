# Stage 2: byte-level BPE trained in Rust, then every split encoded into binary token shards.


def dataset_of_tokdir(wildcards):
    return wildcards.tokdir.rsplit("-v", 1)[0]


def tokdir_vocab(wildcards):
    return int(wildcards.tokdir.rsplit("-v", 1)[1])


rule train_tokenizer:
    input:
        lambda w: paths.synthetic(dataset_of_tokdir(w), "train.parquet"),
    output:
        "data/tokenizer/{tokdir}/tokenizer.json",
    log:
        f"{LOGS}/train_tokenizer/{{tokdir}}.log",
    benchmark:
        f"{BENCHMARKS}/train_tokenizer/{{tokdir}}.tsv"
    resources:
        **SMALL_JOB,
    params:
        vocab=tokdir_vocab,
        impl=config["tokenizer"]["impl"],
        cmd=lambda w, input, output: commands.shell(
            commands.train_tokenizer(
                input[0], tokdir_vocab(w), config["tokenizer"]["impl"], output[0]
            )
        ),
    message:
        "train the BPE tokenizer {wildcards.tokdir}"
    shell:
        "{params.cmd} > {log} 2>&1"


rule encode_tokens:
    input:
        tokenizer="data/tokenizer/{tokdir}/tokenizer.json",
        text=lambda w: paths.synthetic(dataset_of_tokdir(w), f"{w.split}.parquet"),
    output:
        paths.SHARD,
    log:
        f"{LOGS}/encode_tokens/{{tokdir}}-{{split}}.log",
    benchmark:
        f"{BENCHMARKS}/encode_tokens/{{tokdir}}-{{split}}.tsv"
    resources:
        **SMALL_JOB,
    params:
        impl=config["tokenizer"]["impl"],
        cmd=lambda w, input, output: commands.shell(
            commands.encode_tokens(
                input.tokenizer, input.text, config["tokenizer"]["impl"], output[0]
            )
        ),
    message:
        "encode the {wildcards.split} split into token shards ({wildcards.tokdir})"
    shell:
        "{params.cmd} > {log} 2>&1"
