"""The workflow config: load, validate, and expand sweeps into named runs.

Serves the contract "a run is named by its parameters": every training run of the graph is one
entry of `resolve_runs(config)`, keyed by a run id built from (dataset, arch, size, tokens,
parallelism, and the seed where a sweep's `seeds` differ from `training.seed`), and carrying exactly the settings that run depends on, so Snakemake reruns a run
when, and only when, one of its own settings changes. A bad key or value fails here, naming the
key, before any job is planned.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from nanigpt.keys import key_path, unknown_keys_message
from nanigpt.model.config import model_default, moe_defaults
from nanigpt.parallel.setting import validate_parallelism, world_size
from nanigpt.training.config import run_settings, tokens_per_step

if TYPE_CHECKING:
    import jsonschema

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG_PATH = REPO_ROOT / "workflow" / "config" / "default.yaml"

# Defaults of the MoE layer, applied under an arch of kind "moe": MoEConfig's, the one set (routing
# defaults chosen by measurement: nanigpt/model/moe.py's docstring and README say why).
MOE_DEFAULTS = moe_defaults()
MOE_KEYS = set(MOE_DEFAULTS)
# Training settings a size may override: lr and warmup chosen per size by an lr probe sweep, and a
# smaller batch (more optimizer steps per token) where a small model's step is overhead-bound.
SIZE_TRAINING = ("lr", "warmup_frac", "batch_size")
# `training` keys that say how the graph's jobs train runs, not what a run is: kept out of every
# run's settings (run ids, specs and checkpoint fingerprints stay as they are; a run's outputs do
# not depend on them beyond float rounding: tests/test_jobs.py).
PLANNING_ONLY = ("stack_replicas",)


class ConfigError(ValueError):
    """A config that cannot be run; the message names the key, the value and what was expected."""


def load_schema() -> dict:
    return load_yaml(SCHEMA_PATH.read_text())


def load_yaml(text: str):
    """`yaml.safe_load` through libyaml's C parser when PyYAML has it (about 10x faster on the
    default config; every Snakemake start-up reads it), else PyYAML's Python one; same result."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_config(path: str | Path | None = None) -> dict:
    """Read a YAML config (the embedded default when `path` is None) and validate it."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = load_yaml(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    return validate_config(raw, source=str(path))


def _schema_error_message(error: jsonschema.ValidationError, source: str) -> str:
    where = key_path(list(error.absolute_path))
    if error.validator == "additionalProperties":
        allowed = error.schema.get("properties", {})
        instance = error.instance if isinstance(error.instance, dict) else {}
        message = unknown_keys_message(instance, allowed, list(error.absolute_path))
        return f"{source}: {message or error.message}"
    if error.validator == "required":
        return f"{source}: at '{where}': {error.message}"
    if error.validator == "propertyNames":
        return f"{source}: at '{where}': name {error.instance!r} is not allowed: {error.message}"
    return f"{source}: invalid value for '{where}': {error.message}"


def _apply_defaults(instance: Any, schema: dict) -> None:
    """Fill in the schema's `default`s, recursively, for objects present in the instance."""
    if not isinstance(instance, dict) or schema.get("type") != "object":
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _apply_defaults(instance[key], sub)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in schema.get("properties", {}):
                _apply_defaults(value, extra)


def validate_config(raw: Any, source: str = "config") -> dict:
    """Validate against the JSON schema, fill defaults, then check cross-references.

    A config validated before (same content, same schema, same validating code) is taken from
    `nanigpt.graph.plancache`, so planning an unchanged graph skips jsonschema; errors are not cached."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a config must be a mapping, got {type(raw).__name__}")
    from nanigpt.graph.plancache import cached

    schema_sha = hashlib.sha256(SCHEMA_PATH.read_bytes()).hexdigest()
    key = f"{schema_sha}:{json.dumps(raw, sort_keys=True, default=str)}"
    return cached("validated_config", key, lambda: _validate_config(raw, source))


def _validate_config(raw: dict, source: str) -> dict:
    import jsonschema  # ~0.15 s: only when the config is not in the plan cache

    config = copy.deepcopy(raw)
    _budgets_as_numbers(config)
    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), e.path))
    if errors:
        raise ConfigError(_schema_error_message(errors[0], source))
    _apply_defaults(config, schema)
    _check_references(config, source)
    return config


def _budgets_as_numbers(config: dict) -> None:
    """YAML 1.1 (PyYAML, Snakemake) reads `3e10` and `1.0e10` as strings (a float needs a dot and a
    signed exponent: `3.0e+10`); a budget written either way is taken as the number it spells."""
    sweeps = config.get("sweeps")
    for sweep in sweeps.values() if isinstance(sweeps, dict) else []:
        budgets = sweep.get("budgets") if isinstance(sweep, dict) else None
        if isinstance(budgets, list):
            for i, value in enumerate(budgets):
                if isinstance(value, str):
                    with contextlib.suppress(ValueError):  # not a number: the schema names it
                        budgets[i] = float(value)


def _check_datasets(config: dict, source: str) -> None:
    """Each dataset's own spec class checks the keys of its kind, before any job runs."""
    from nanigpt.data.realtext import RealTextError, RealTextSpec
    from nanigpt.data.synthetic import SpecError, SyntheticSpec

    for name, spec in config["datasets"].items():
        try:
            if spec["kind"] == "python_stdlib":
                RealTextSpec.from_dict(spec)
            else:
                SyntheticSpec.from_dict(spec)
        except (RealTextError, SpecError, TypeError) as e:
            raise ConfigError(f"{source}: datasets.{name}: {e}") from None


def _check_references(config: dict, source: str) -> None:
    _check_datasets(config, source)
    for name, size in config["sizes"].items():
        if size["d_model"] % size["n_head"]:
            raise ConfigError(
                f"{source}: sizes.{name}: d_model={size['d_model']} is not divisible by "
                f"n_head={size['n_head']}"
            )
        if (size["d_model"] // size["n_head"]) % 2:
            raise ConfigError(
                f"{source}: sizes.{name}: head dim d_model/n_head="
                f"{size['d_model'] // size['n_head']} must be even for rotary embeddings"
            )
    for name, arch in config["archs"].items():
        if arch["kind"] == "dense":
            stray = sorted(set(arch) - {"kind", "mlp_ratio"})
            if stray:
                raise ConfigError(
                    f"{source}: archs.{name}: kind dense takes no MoE settings, got {stray}"
                )
        else:
            moe = {**MOE_DEFAULTS, **{k: v for k, v in arch.items() if k in MOE_KEYS}}
            experts = moe["num_experts"] * moe["granularity"]
            if moe["top_k"] * moe["granularity"] > experts:
                raise ConfigError(
                    f"{source}: archs.{name}.top_k={moe['top_k']} exceeds num_experts="
                    f"{moe['num_experts']}"
                )
    for name, sweep in config["sweeps"].items():
        for key, table in [("dataset", "datasets")]:
            if sweep[key] not in config[table]:
                raise ConfigError(
                    f"{source}: sweeps.{name}.{key}: unknown {key} '{sweep[key]}' "
                    f"(defined: {', '.join(config[table])})"
                )
        sweep.setdefault("parallelism", [next(iter(config["parallelism"]))])
        for key in ("archs", "sizes", "parallelism"):
            for entry in sweep[key]:
                if entry not in config[key]:
                    raise ConfigError(
                        f"{source}: sweeps.{name}.{key}: unknown entry '{entry}' "
                        f"(defined under {key}: {', '.join(config[key])})"
                    )
        if sweep.get("grouped") and "cooldown" in sweep:
            raise ConfigError(
                f"{source}: sweeps.{name}: 'grouped' and 'cooldown' together: a WSD sweep's runs "
                f"already train in one job (nanigpt.graph.jobs); drop 'grouped'"
            )
    if stack_replicas(config) and not any(s.get("grouped") for s in config["sweeps"].values()):
        raise ConfigError(
            f"{source}: training.stack_replicas: true, but no sweep has 'grouped: true': stacked "
            f"replicas train inside grouped jobs (nanigpt.graph.jobs); set 'grouped: true' on the "
            f"sweeps to stack, or drop the switch"
        )
    for entry in config.get("bench", {}).get("datasets", []):
        if entry not in config["datasets"]:
            raise ConfigError(
                f"{source}: bench.datasets: unknown dataset '{entry}' "
                f"(defined: {', '.join(config['datasets'])})"
            )
    _check_parallelism(config, source)
    analysis = config.get("moe_analysis")
    if analysis:
        named = [("sweeps", s) for s in analysis["sweeps"]]
        named += [("control_sweep", analysis["control_sweep"])] if analysis["control_sweep"] else []
        for group in ("load", "crossover", "experts", "knowledge"):
            named += [(f"{group}.{k}", s) for k, v in analysis[group].items() for s in v]
        for where, sweep in named:
            if sweep not in config["sweeps"]:
                raise ConfigError(
                    f"{source}: moe_analysis.{where}: unknown sweep '{sweep}' "
                    f"(defined: {', '.join(config['sweeps'])})"
                )
        if analysis["eval_dataset"] and analysis["eval_dataset"] not in config["datasets"]:
            raise ConfigError(
                f"{source}: moe_analysis.eval_dataset: unknown dataset "
                f"'{analysis['eval_dataset']}' (defined: {', '.join(config['datasets'])})"
            )
    if config["scaling"]["sweep"] not in config["sweeps"]:
        raise ConfigError(
            f"{source}: scaling.sweep: unknown sweep '{config['scaling']['sweep']}' "
            f"(defined: {', '.join(config['sweeps'])})"
        )
    _check_budgets(config, source)


def _check_parallelism(config: dict, source: str) -> None:
    """Every (parallelism, arch, size) a sweep combines must be able to run: the strategy uses only
    its dims, tp divides the heads and the MLP width, ep divides the experts (and needs an MoE), the
    batch splits over the data-parallel ranks (`nanigpt.parallel.setting.validate_parallelism`)."""
    checked = set()
    for sweep_name, sweep in config["sweeps"].items():
        for par in sweep["parallelism"]:
            setting = config["parallelism"][par]
            if world_size(setting) == 1 and "strategy" not in setting:
                continue  # one process: nothing to check (and no torch import when planning)
            for arch in sweep["archs"]:
                for size in sweep["sizes"]:
                    if (par, arch, size) in checked:
                        continue
                    checked.add((par, arch, size))
                    model = _model_settings(config, sweep["dataset"], size, arch)
                    try:
                        validate_parallelism(
                            setting, model, batch_size=config["training"]["batch_size"]
                        )
                    except ValueError as e:
                        raise ConfigError(
                            f"{source}: sweeps.{sweep_name}: parallelism '{par}' with arch "
                            f"'{arch}' and size '{size}' cannot run: {e}"
                        ) from None


# An IsoFLOP profile fits a parabola per budget: at least this many sizes (as
# nanigpt.scaling.isoflop.MIN_SIZES_PER_BUDGET; not imported here, to keep planning light).
ISOFLOP_MIN_SIZES = 3


def _count_train_flops_per_token(model_json: str) -> int:
    from nanigpt.model.flops import count  # torch-free; only configs with `budgets` count FLOPs

    model = json.loads(model_json)
    return int(count(model, seq_len=model["seq_len"]).train_flops_per_token)


@functools.lru_cache(maxsize=4096)
def _train_flops_per_token(model_json: str) -> int:
    from nanigpt.graph.plancache import cached  # keeps torch out of planning once counted

    return cached(
        "train_flops_per_token", model_json, lambda: _count_train_flops_per_token(model_json)
    )


def train_flops_per_token(model: dict) -> int:
    """Counted training FLOPs per token of a run's `model` settings: the trainer's
    `flops_per_token` (summary.json), `nanigpt.model.flops.count` at the trained context."""
    return _train_flops_per_token(json.dumps(model, sort_keys=True))


def budget_tokens(config: dict, sweep_name: str, arch: str, size: str, budget: float) -> int:
    """Tokens that spend `budget` training FLOPs on (arch, size): budget / flops_per_token,
    rounded half up to a whole number of batches (`tokens_per_step`), so the trainer runs exactly
    that many tokens and the run's counted FLOPs miss the budget by at most half a batch's worth.
    A budget that does not buy one batch is refused, naming the sweep, size and budget."""
    batch = tokens_per_step(config["training"])
    fpt = train_flops_per_token(
        _model_settings(config, config["sweeps"][sweep_name]["dataset"], size, arch)
    )
    exact = budget / fpt
    if exact < batch:
        raise ConfigError(
            f"sweeps.{sweep_name}: budget {budget:.4g} FLOPs buys size '{size}' (arch '{arch}', "
            f"{fpt} training FLOPs/token) only {exact:.0f} tokens, under one batch of {batch} "
            f"(training.seq_len x batch_size x grad_accum); raise the budget to at least "
            f"{batch * fpt:.4g} or drop the size"
        )
    return math.floor(exact / batch + 0.5) * batch


def sweep_tokens(
    config: dict, sweep_name: str, arch: str, size: str
) -> list[tuple[int, float | None]]:
    """(tokens, budget) of each run of (arch, size) in a sweep; budget is None for a `tokens` sweep."""
    sweep = config["sweeps"][sweep_name]
    if "budgets" in sweep:
        return [(budget_tokens(config, sweep_name, arch, size, c), c) for c in sweep["budgets"]]
    return [(tokens, None) for tokens in sweep["tokens"]]


def _check_budgets(config: dict, source: str) -> None:
    """Each sweep gives exactly one of `tokens` and `budgets`; every budget buys each size at least
    one batch, and each run's FLOPs stay nearer its own budget than any other (so IsoFLOP groups
    are unambiguous after the rounding); `isoflop.sweeps` name budget sweeps with enough sizes."""
    for name, sweep in config["sweeps"].items():
        given = [key for key in ("tokens", "budgets") if key in sweep]
        if len(given) != 1:
            raise ConfigError(
                f"{source}: sweeps.{name}: give exactly one of 'tokens' (token counts per run) "
                f"or 'budgets' (training FLOPs per run; tokens derived per size), got "
                f"{' and '.join(repr(k) for k in given) or 'neither'}"
            )
        if "budgets" not in sweep:
            continue
        for arch in sweep["archs"]:
            for size in sweep["sizes"]:
                try:
                    pairs = sweep_tokens(config, name, arch, size)
                except ConfigError as e:
                    raise ConfigError(f"{source}: {e}") from None
                fpt = train_flops_per_token(_model_settings(config, sweep["dataset"], size, arch))
                for tokens, budget in pairs:
                    spent = math.log(tokens * fpt)
                    nearest = min(sweep["budgets"], key=lambda c: abs(math.log(c) - spent))
                    if nearest != budget:
                        raise ConfigError(
                            f"{source}: sweeps.{name}: budget {budget:.6g} FLOPs rounds size "
                            f"'{size}' (arch '{arch}') to {tokens} tokens = {tokens * fpt:.6g} "
                            f"FLOPs, nearer budget {nearest:.6g}: space the budgets further "
                            f"apart than one batch's FLOPs"
                        )
    isoflop = config.get("isoflop")
    if not isoflop:
        return
    for sweep_name in isoflop["sweeps"]:
        sweep = config["sweeps"].get(sweep_name)
        if sweep is None:
            raise ConfigError(
                f"{source}: isoflop.sweeps: unknown sweep '{sweep_name}' "
                f"(defined: {', '.join(config['sweeps'])})"
            )
        if "budgets" not in sweep:
            raise ConfigError(
                f"{source}: isoflop.sweeps: sweep '{sweep_name}' lists 'tokens'; an IsoFLOP "
                f"profile needs a sweep that declares 'budgets' (training FLOPs)"
            )
        if len(sweep["sizes"]) < ISOFLOP_MIN_SIZES or len(sweep["budgets"]) < 2:
            raise ConfigError(
                f"{source}: isoflop.sweeps: sweep '{sweep_name}' has {len(sweep['sizes'])} "
                f"size(s) and {len(sweep['budgets'])} budget(s); an IsoFLOP fit needs at least "
                f"{ISOFLOP_MIN_SIZES} sizes and 2 budgets"
            )


def tokens_label(tokens: int) -> str:
    """50000 -> '50k', 2000000 -> '2M', 1234 -> '1234': short, exact and unique."""
    if tokens % 1_000_000 == 0:
        return f"{tokens // 1_000_000}M"
    if tokens % 1000 == 0:
        return f"{tokens // 1000}k"
    return str(tokens)


def run_id_for(dataset: str, arch: str, size: str, tokens: int, parallelism: str) -> str:
    return f"{dataset}_{arch}_{size}_t{tokens_label(tokens)}_{parallelism}"


def vocab_size_for(config: dict, dataset: str) -> int:
    return config["tokenizer"]["vocab_size"]


SPEED_OPTIONS = ("fused_projections", "fusable_rope_norm", "attention_backend", "precision")


def _model_settings(config: dict, dataset: str, size: str, arch: str) -> dict:
    size_cfg = config["sizes"][size]
    arch_cfg = config["archs"][arch]
    moe = None
    if arch_cfg["kind"] == "moe":
        moe = {**MOE_DEFAULTS, **{k: v for k, v in arch_cfg.items() if k in MOE_KEYS}}
    # The most specific MLP ratio wins: the arch's (a wider dense baseline), the size's, the model's.
    shared = config["model"]  # unset keys take GPTConfig's defaults (nanigpt.model.config)
    mlp_ratio = shared.get("mlp_ratio", model_default("mlp_ratio"))
    mlp_ratio = arch_cfg.get("mlp_ratio", size_cfg.get("mlp_ratio", mlp_ratio))
    kernels = shared.get("kernels", "torch")  # written only when not torch: ids unchanged
    return {
        "vocab_size": vocab_size_for(config, dataset),
        "seq_len": config["training"]["seq_len"],
        "n_layer": size_cfg["n_layer"],
        "d_model": size_cfg["d_model"],
        "n_head": size_cfg["n_head"],
        "mlp_ratio": mlp_ratio,
        "tied_embeddings": shared.get("tied_embeddings", model_default("tied_embeddings")),
        "moe": moe,
        **({"kernels": kernels} if kernels != "torch" else {}),
        # Issue 30's speed options, written only where set away from GPTConfig's default (ids and
        # the settings of every existing run unchanged).
        **{k: shared[k] for k in SPEED_OPTIONS if k in shared and shared[k] != model_default(k)},
    }


def sweep_seeds(config: dict, sweep_name: str) -> list[int]:
    """The training seeds of a sweep: its `seeds`, else `[training.seed]`."""
    return list(config["sweeps"][sweep_name].get("seeds") or [config["training"]["seed"]])


def seeded_run_id(config: dict, run_id: str, seed: int) -> str:
    """A run id with its seed: `_seed{n}` appended unless n is the config's `training.seed`, so
    the base seed's run keeps its id and is shared by single- and multi-seed sweeps."""
    return run_id if seed == config["training"]["seed"] else f"{run_id}_seed{seed}"


_RESOLVED: dict[str, dict[str, dict]] = {}


def stack_replicas(config: dict) -> bool:
    """`training.stack_replicas`: whether grouped jobs train their runs of one shape as stacked
    replicas (`nanigpt.graph.jobs`, `nanigpt.training.stacked_runs`); default false."""
    return bool(config["training"].get("stack_replicas", False))


def resolve_runs(config: dict) -> dict[str, dict]:
    """Every run of every sweep, keyed by run id, each with only the settings it depends on.

    Memoised on the config's content: planning asks for it once per sweep lookup (dozens of
    times in one Snakemake start-up), and the expansion is the same each time. The mapping
    returned is shared between callers: read it, do not change it (`expand_runs` builds a new one).
    """
    key = json.dumps(config, sort_keys=True, default=str)
    if key not in _RESOLVED:
        _RESOLVED.clear()  # one config at a time is all a process plans with
        _RESOLVED[key] = expand_runs(config)
    return _RESOLVED[key]


def expand_runs(config: dict) -> dict[str, dict]:
    """`resolve_runs` without the memo: every run of every sweep, built anew."""
    runs: dict[str, dict] = {}
    run_training = {k: v for k, v in config["training"].items() if k not in PLANNING_ONLY}
    for sweep_name, sweep in config["sweeps"].items():
        dataset = sweep["dataset"]
        for arch in sweep["archs"]:
            for size in sweep["sizes"]:
                pairs = sweep_tokens(config, sweep_name, arch, size)
                size_training = {
                    k: v for k, v in config["sizes"][size].items() if k in SIZE_TRAINING
                }
                for (tokens, budget), par, seed, lr in itertools.product(
                    pairs,
                    sweep["parallelism"],
                    sweep_seeds(config, sweep_name),
                    sweep.get("lrs", [None]),
                ):
                    run_id = seeded_run_id(
                        config, run_id_for(dataset, arch, size, tokens, par), seed
                    )
                    if lr is not None:  # an lr probe (`lrs`): the value in the id, 0.01 -> lr0p01
                        run_id += f"_lr{lr:g}".replace(".", "p").replace("-", "m")
                        size_training["lr"] = lr
                    run = {
                        "run_id": run_id,
                        "dataset": dataset,
                        "arch": arch,
                        "arch_kind": config["archs"][arch]["kind"],
                        "size": size,
                        "tokens": tokens,
                        "parallelism_name": par,
                        "parallelism": dict(config["parallelism"][par]),
                        "model": _model_settings(config, dataset, size, arch),
                        "training": {**run_training, **size_training, "seed": seed},
                        "profile": dict(config["profile"]),
                        "seed": seed,
                    }
                    if "cooldown" in sweep:
                        _as_wsd_branch(config, run, sweep, min(t for t, _ in pairs))
                        run_id = run["run_id"]
                    known = runs.setdefault(run_id, run)
                    if known is not run and run_settings_json(known) != run_settings_json(run):
                        raise ConfigError(
                            f"sweeps.{sweep_name}: run '{run_id}' is also declared by sweep "
                            f"'{known['sweeps'][0]}' with other settings (a WSD warmup follows "
                            f"its sweep's smallest budget); give one of them its own size name"
                        )
                    runs[run_id].setdefault("sweeps", [])
                    runs[run_id]["sweeps"].append(sweep_name)
                    if budget is not None:  # bookkeeping, like `sweeps`: not a setting
                        runs[run_id].setdefault("budgets", {})[sweep_name] = budget
    return runs


def _as_wsd_branch(config: dict, run: dict, sweep: dict, smallest_tokens: int) -> None:
    """Make `run` a WSD cooldown branch (`nanigpt.graph.jobs`): id suffix `_wsd`, a linear cooldown over
    the sweep's `cooldown` fraction, and a warmup of `warmup_frac` of the smallest budget's steps,
    the same for every budget (the branches share one stable run)."""
    run["run_id"] += "_wsd"
    smallest_steps = math.ceil(smallest_tokens / tokens_per_step(run["training"]))
    run["training"].update(
        schedule="wsd",
        decay_frac=sweep["cooldown"],
        warmup_steps=round(run["training"]["warmup_frac"] * smallest_steps),
    )


def sweep_run_ids(config: dict, sweep_name: str) -> list[str]:
    return [rid for rid, run in resolve_runs(config).items() if sweep_name in run["sweeps"]]


def profiled_run_ids(config: dict, sweep_name: str) -> list[str]:
    """The runs of a sweep whose profile reports make its step breakdown: per (dataset, arch,
    size, seed, parallelism, lr, batch) the run of the most tokens. A sweep's budgets of one model
    step alike (the same model, batch and kernels; a WSD sweep's branches even share the stable
    run's trace), so profiling each budget repeats one measurement; any other run's report is a
    target of its own (`results/profile/{run_id}/report.json`)."""
    runs = resolve_runs(config)
    largest: dict[tuple, str] = {}
    for rid in sweep_run_ids(config, sweep_name):
        run = runs[rid]
        training = run["training"]
        key = (
            run["dataset"],
            run["arch"],
            run["size"],
            run["seed"],
            run["parallelism_name"],
            training["lr"],
            training["batch_size"],
        )
        if key not in largest or run["tokens"] > runs[largest[key]]["tokens"]:
            largest[key] = rid
    return list(largest.values())


def moe_eval_dataset(config: dict, run: dict) -> str:
    """The dataset whose validation text scores a run's experts: `moe_analysis.eval_dataset`, else
    the run's own (so a single-source control can be scored on the mixture's sources)."""
    return (config.get("moe_analysis") or {}).get("eval_dataset") or run["dataset"]


def moe_analysed_runs(config: dict) -> dict[str, str]:
    """Every MoE run of `moe_analysis.sweeps` and its `control_sweep` at the base seed
    (`training.seed`; scoring every seed would double the analysis' cost), in config order, mapped
    to `moe_eval_dataset`: the runs that get specialization.json and a heatmap."""
    spec = config.get("moe_analysis") or {}
    sweeps = list(spec.get("sweeps") or []) + [s for s in [spec.get("control_sweep")] if s]
    runs = resolve_runs(config)
    return {
        rid: moe_eval_dataset(config, runs[rid])
        for sweep in sweeps
        for rid in moe_run_ids(config, sweep)
    }


def moe_run_ids(config: dict, sweep: str) -> list[str]:
    """The MoE runs of a sweep at the base seed (dense runs have no router to analyse; the
    specialization of other seeds is not scored, to keep the analysis' cost)."""
    runs = resolve_runs(config)
    return [
        rid
        for rid in sweep_run_ids(config, sweep)
        if runs[rid]["arch_kind"] == "moe" and runs[rid]["seed"] == config["training"]["seed"]
    ]


def moe_mi_run_ids(config: dict) -> list[str]:
    """The runs of the MI-over-training figure: the control sweep's MoE runs and the mixture
    sweeps' runs of the same (arch, size, tokens), else every MoE run of `moe_analysis.sweeps`."""
    spec = config.get("moe_analysis") or {}
    runs = resolve_runs(config)
    control = moe_run_ids(config, spec["control_sweep"]) if spec.get("control_sweep") else []
    keys = {(runs[r]["arch"], runs[r]["size"], runs[r]["tokens"]) for r in control}
    mixture = [r for s in spec.get("sweeps") or [] for r in moe_run_ids(config, s)]
    matched = [r for r in mixture if (runs[r]["arch"], runs[r]["size"], runs[r]["tokens"]) in keys]
    return sorted(set((matched or mixture) + control))


def sweeps_run_ids(config: dict, sweeps: list[str], moe_only: bool) -> list[str]:
    """Run ids of several sweeps (only their `moe_run_ids` when `moe_only`), each once, in config
    order."""
    of_sweep = (
        (lambda s: moe_run_ids(config, s)) if moe_only else (lambda s: sweep_run_ids(config, s))
    )
    return list(dict.fromkeys(rid for s in sweeps for rid in of_sweep(s)))


def run_settings_json(run: dict) -> str:
    """The run's settings as canonical JSON (what the trainer gets and what Snakemake compares)."""
    return json.dumps(run_settings(run), sort_keys=True, separators=(",", ":"))


def main(argv: list[str] | None = None) -> None:
    """`python -m nanigpt.graph.config [CONFIG]`: validate a config and list the runs it declares."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("config", nargs="?", help="YAML config (default: the embedded default)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    runs = resolve_runs(config)
    print(f"config OK: {len(runs)} runs")
    for run_id, run in runs.items():
        budgets = ", ".join(f"{c:.3g} FLOPs in {s}" for s, c in run.get("budgets", {}).items())
        print(f"  {run_id}" + (f"  (budget {budgets})" if budgets else ""))


if __name__ == "__main__":
    main()
