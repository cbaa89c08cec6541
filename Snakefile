# naniGPT's experiment graph: synthetic data -> Rust BPE -> token shards -> training runs ->
# aggregate -> scaling fits -> figures. Every target is a file rebuilt from declared inputs.
# Logic lives in nanigpt/ (each rule calls a `python -m nanigpt....` CLI); this file loads and
# validates the config, then includes one rule file per stage.
from nanigpt.config import ConfigError, DEFAULT_CONFIG_PATH, load_config, validate_config

# `--configfile X.yaml` replaces the embedded default as a whole; without it the default is used.
try:
    config = validate_config(config, source="--configfile") if config else load_config(DEFAULT_CONFIG_PATH)
except ConfigError as error:
    raise WorkflowError(f"invalid config: {error}") from None


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tokenize.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/wsd.smk"
include: "workflow/rules/profile.smk"
include: "workflow/rules/scaling.smk"
include: "workflow/rules/plots.smk"
include: "workflow/rules/isoflop.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/moe.smk"


rule all:
    default_target: True
    input:
        "results/scaling/moe_vs_dense.svg",
        "results/scaling/fit_residuals.svg",
        ISOFLOP_TARGETS,
        "results/profile/summary.parquet",
        "results/profile/breakdown.svg",
        "results/rust/tokenizer.svg" if "bench" in config else [],
        MOE_TARGETS,
