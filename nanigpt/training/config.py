"""One run, typed: the settings a training run depends on, checked once, without torch.

Serves the contract "a run is named by its parameters" (`docs/interfaces.md`, "A run"): every run
of the graph is one `RunConfig`, built from the dict `nanigpt.graph.config.resolve_runs` writes (and
`--run-config` passes to `nanigpt.train`) and refused here, naming the key, the value and what was
expected, before any process starts. Its parts are the model (`nanigpt.model.config.GPTConfig`,
with its `MoEConfig`), the parallelism (`nanigpt.parallel.setting.ParallelSetting`), the training
settings and the profiler window; it imports no torch, so planning and training read the same
classes.

Defaults live once: the model's in `nanigpt.model.config`, the profiler window's in the workflow
schema (`workflow/schemas/config.schema.yaml`, read here), the optional training keys' below.
`as_dict()` is the dict the run was built from (with the profile filled in): what `config.json`
records and what `nanigpt.training.checkpoint.state.run_fingerprint` hashes, so both are unchanged
by the typing. `run_settings` and `tokens_per_step` are the one home of a run's settings without
the planner's bookkeeping and of the tokens one optimizer step takes, for planner and trainer alike.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from nanigpt.model.config import GPTConfig
from nanigpt.parallel.setting import ParallelSetting, validate_parallelism
from nanigpt.training.schedule import DEFAULT_WSD_DECAY_FRAC, SCHEDULES, branch_step

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
CHECKPOINT_FORMATS = ("torch", "rust")  # nanigpt.training.checkpoint.policy.FILES
DEFAULT_CHECKPOINT_FORMAT = "rust"  # training.checkpoint_format unset (README: checkpoint bench)
DEFAULT_CHECKPOINTS_PER_RUN = 10  # training.checkpoint_every unset: every 10% of the steps
DEVICES = ("auto", "cpu", "cuda")


# Keys the planner adds to a resolved run that are bookkeeping, not settings: the sweeps that list
# the run and the FLOP budget it spends in each (`nanigpt.graph.config.expand_runs`).
BOOKKEEPING = ("sweeps", "budgets")


class RunConfigError(ValueError):
    """The run config is missing a key or has a value of the wrong type or range."""


def run_settings(run: dict[str, Any]) -> dict[str, Any]:
    """A resolved run without its bookkeeping keys: the settings the trainer gets and Snakemake
    compares (`nanigpt.graph.config.run_settings_json`), and what a checkpoint fingerprints."""
    return {k: v for k, v in run.items() if k not in BOOKKEEPING}


def tokens_per_step(training: dict[str, Any]) -> int:
    """Tokens of one optimizer step (the global batch) of a run's or a config's `training`
    section: seq_len x batch_size x grad_accum (grad_accum 1 where the section leaves it out)."""
    return training["seq_len"] * training["batch_size"] * training.get("grad_accum", 1)


def branch_step_of(run: dict[str, Any]) -> int:
    """The stable-run step a WSD budget run branches from (`nanigpt.training.schedule.branch_step`
    of its steps, warmup and cooldown fraction): for the planner, which sizes the stable run to the
    latest branch point, and the job that trains the branches alike."""
    t = run["training"]
    steps = math.ceil(run["tokens"] / tokens_per_step(t))
    return branch_step(steps, t["warmup_steps"], t["decay_frac"])


@functools.cache
def _schema_defaults(section: str) -> dict[str, Any]:
    """The workflow schema's `default`s of one top-level section (the graph's, hence the run's)."""
    import yaml

    props = yaml.safe_load(SCHEMA_PATH.read_text())["properties"][section]["properties"]
    return {key: spec["default"] for key, spec in props.items() if "default" in spec}


def default_profile() -> dict[str, Any]:
    """The profiler window of a run that names none: the workflow schema's `profile` defaults."""
    return dict(_schema_defaults("profile"))


# ---------------------------------------------------------------------------------------------
# Checks, each naming the key


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (_is_int, "an integer"),
    "number": (_is_number, "a number"),
    "bool": (lambda v: isinstance(v, bool), "a boolean"),
    "dict": (lambda v: isinstance(v, dict), "an object"),
    "int?": (lambda v: v is None or _is_int(v), "an integer or null"),
    "number?": (lambda v: v is None or _is_number(v), "a number or null"),
}

RUN_KEYS = {
    "run_id": "str",
    "dataset": "str",
    "arch": "str",
    "arch_kind": "str",
    "size": "str",
    "tokens": "int",
    "parallelism_name": "str",
    "parallelism": "dict",
    "model": "dict",
    "training": "dict",
}
MODEL_KEYS = {"vocab_size": "int", "seq_len": "int"}  # the rest is GPTConfig.from_dict's to check
PROFILE_KEYS = {"enabled": "bool", "wait": "int", "warmup": "int", "active": "int"}
PARALLELISM_KEYS = {"dp": "int", "fsdp": "int", "tp": "int", "ep": "int"}


def _check_keys(obj: dict, spec: dict[str, str], where: str) -> None:
    for key, kind in spec.items():
        name = f"{where}{key}"
        if key not in obj:
            raise RunConfigError(f"run config: missing key '{name}' (expected {_KINDS[kind][1]})")
        check, expected = _KINDS[kind]
        if not check(obj[key]):
            value = obj[key]
            raise RunConfigError(
                f"run config: '{name}' must be {expected}, got {type(value).__name__} {value!r}"
            )


def _require(condition: bool, key: str, value: Any, expected: str) -> None:
    if not condition:
        raise RunConfigError(f"run config: '{key}' = {value!r} is invalid: expected {expected}")


# ---------------------------------------------------------------------------------------------
# The parts


@dataclass(frozen=True)
class TrainingConfig:
    """`training`: the optimizer, schedule, evaluation and checkpoint settings of a run."""

    seq_len: int
    batch_size: int
    grad_accum: int
    lr: float
    min_lr_frac: float
    warmup_frac: float
    schedule: str
    weight_decay: float
    grad_clip: float | None
    eval_every: int | None
    eval_batches: int
    seed: int
    device: str
    compile: bool
    threads: int | None
    checkpoint_every: int | None = None  # None: DEFAULT_CHECKPOINTS_PER_RUN per run
    snapshot_every: int | None = None
    warmup_steps: int | None = None  # set for WSD runs: the same for every branch
    checkpoint_format: str = DEFAULT_CHECKPOINT_FORMAT
    decay_frac: float = DEFAULT_WSD_DECAY_FRAC
    loader_impl: str = "python"

    @classmethod
    def from_dict(cls, t: dict[str, Any], model_seq_len: int) -> TrainingConfig:
        """Checked; keys this class does not name are left in the run's dict, unread."""
        _check_keys(t, _TRAINING_KINDS, "training.")
        for key in ("seq_len", "batch_size", "grad_accum", "eval_batches"):
            _require(t[key] >= 1, f"training.{key}", t[key], ">= 1")
        _require(
            t["seq_len"] <= model_seq_len,
            "training.seq_len",
            t["seq_len"],
            f"<= model.seq_len ({model_seq_len})",
        )
        _require(t["lr"] > 0, "training.lr", t["lr"], "> 0")
        _require(0 <= t["min_lr_frac"] <= 1, "training.min_lr_frac", t["min_lr_frac"], "in [0, 1]")
        _require(0 <= t["warmup_frac"] < 1, "training.warmup_frac", t["warmup_frac"], "in [0, 1)")
        _require(
            t["schedule"] in SCHEDULES, "training.schedule", t["schedule"], " or ".join(SCHEDULES)
        )
        _require(t["weight_decay"] >= 0, "training.weight_decay", t["weight_decay"], ">= 0")
        _require(t["device"] in DEVICES, "training.device", t["device"], "auto, cpu or cuda")
        _require(
            t["threads"] is None or t["threads"] >= 1, "training.threads", t["threads"], ">= 1"
        )
        fmt = t.get("checkpoint_format", DEFAULT_CHECKPOINT_FORMAT)
        _require(fmt in CHECKPOINT_FORMATS, "training.checkpoint_format", fmt, "torch or rust")
        decay_frac = t.get("decay_frac", DEFAULT_WSD_DECAY_FRAC)
        _require(
            _is_number(decay_frac) and 0 < decay_frac <= 1,
            "training.decay_frac",
            decay_frac,
            "a number in (0, 1]",
        )
        for key in ("checkpoint_every", "snapshot_every", "warmup_steps"):
            if t.get(key) is not None:
                _check_keys(t, {key: "int?"}, "training.")
                _require(t[key] >= 0, f"training.{key}", t[key], ">= 0")
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in t.items() if key in names})


_TRAINING_KINDS = {
    "seq_len": "int",
    "batch_size": "int",
    "grad_accum": "int",
    "lr": "number",
    "min_lr_frac": "number",
    "warmup_frac": "number",
    "schedule": "str",
    "weight_decay": "number",
    "grad_clip": "number?",
    "eval_every": "int?",
    "eval_batches": "int",
    "seed": "int",
    "device": "str",
    "compile": "bool",
    "threads": "int?",
}


@dataclass(frozen=True)
class ProfileConfig:
    """`profile`: the profiler window (`nanigpt.measure.trace.TraceWindow`)."""

    enabled: bool
    wait: int
    warmup: int
    active: int

    @classmethod
    def from_dict(cls, p: Any) -> ProfileConfig:
        if not isinstance(p, dict):
            raise RunConfigError(f"run config: 'profile' must be an object, got {p!r}")
        _check_keys(p, PROFILE_KEYS, "profile.")
        for key in ("wait", "warmup", "active"):
            _require(p[key] >= 0, f"profile.{key}", p[key], ">= 0")
        return cls(**{key: p[key] for key in PROFILE_KEYS})


@dataclass(frozen=True)
class RunConfig:
    """One training run: its names, token budget, model, parallelism, training and profile."""

    run_id: str
    dataset: str
    arch: str
    arch_kind: str
    size: str
    tokens: int
    parallelism_name: str
    parallelism: ParallelSetting
    model: GPTConfig
    training: TrainingConfig
    profile: ProfileConfig
    _source: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, run: Any) -> RunConfig:
        """Check a run dict (docs/interfaces.md, "A run") and type it; RunConfigError names the
        key, the value and what was expected. A missing or null `profile` gets the default."""
        if isinstance(run, RunConfig):
            return run
        if not isinstance(run, dict):
            raise RunConfigError(f"run config must be a JSON object, got {type(run).__name__}")
        _check_keys(run, RUN_KEYS, "")
        _check_keys(run["model"], MODEL_KEYS, "model.")
        _check_keys(run["training"], _TRAINING_KINDS, "training.")
        _check_keys(run["parallelism"], PARALLELISM_KEYS, "parallelism.")
        run = copy.deepcopy(run)
        if run.get("profile") is None:
            run["profile"] = default_profile()
        profile = ProfileConfig.from_dict(run["profile"])
        _require(
            run["arch_kind"] in ("dense", "moe"), "arch_kind", run["arch_kind"], "dense or moe"
        )
        _require(run["tokens"] > 0, "tokens", run["tokens"], "> 0")
        training = TrainingConfig.from_dict(run["training"], run["model"]["seq_len"])
        try:
            model = GPTConfig.from_dict(run["model"])
            setting = validate_parallelism(
                run["parallelism"], model, batch_size=training.batch_size
            )
        except (ValueError, TypeError) as e:
            raise RunConfigError(f"run config: {e}") from e
        return cls(
            **{
                key: run[key] for key in RUN_KEYS if key not in ("parallelism", "model", "training")
            },
            parallelism=setting,
            model=model,
            training=training,
            profile=profile,
            _source=run,
        )

    def as_dict(self) -> dict[str, Any]:
        """The run as the dict it was built from, profile filled in (config.json's `run`)."""
        return copy.deepcopy(self._source)

    # --- what the settings imply --------------------------------------------------------------
    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step: the global batch, seq_len x batch_size x grad_accum."""
        t = self.training
        return tokens_per_step(
            {"seq_len": t.seq_len, "batch_size": t.batch_size, "grad_accum": t.grad_accum}
        )

    @property
    def steps(self) -> int:
        return math.ceil(self.tokens / self.tokens_per_step)

    @property
    def warmup_steps(self) -> int:
        """`training.warmup_steps` where set (WSD: one warmup for every branch), else a fraction."""
        t = self.training
        return t.warmup_steps if t.warmup_steps is not None else round(t.warmup_frac * self.steps)

    @property
    def checkpoint_every(self) -> int:
        """Steps between checkpoints (0: none); unset, DEFAULT_CHECKPOINTS_PER_RUN per run."""
        every = self.training.checkpoint_every
        if every is None:
            return max(1, math.ceil(self.steps / DEFAULT_CHECKPOINTS_PER_RUN))
        return every

    @property
    def lr_schedule(self) -> dict[str, Any]:
        """`nanigpt.training.schedule.lr_at`'s settings of this run (all but the step and the steps)."""
        t = self.training
        return {
            "lr": t.lr,
            "min_lr_frac": t.min_lr_frac,
            "warmup_steps": self.warmup_steps,
            "schedule": t.schedule,
            "decay_frac": t.decay_frac,
        }

    @property
    def snapshot_every(self) -> int:
        return self.training.snapshot_every or 0

    @property
    def eval_every(self) -> int:
        return self.training.eval_every or 0


def validate_run(run: Any) -> dict[str, Any]:
    """Check a run config; return it as a dict with `profile` defaulted (`RunConfig.as_dict`)."""
    return RunConfig.from_dict(run).as_dict()
