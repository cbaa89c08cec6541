"""The training loop, with measurement built in: where does time go in a training step, and how
close does each run get to its data's loss floor? (project questions 1 and 2)

One process trains one run (`docs/interfaces.md`, "A run"): AdamW (fused on CUDA), warmup + cosine
or warmup-stable-decay (WSD) learning rate, gradient clipping and accumulation, bf16 autocast on the
GPU, optional `torch.compile`. On the CPU a run is deterministic: the same seed gives the same losses.
Every step is timed by phase (`nanigpt.measure.timers`) and written to `metrics.parquet` with its
counted FLOPs and MFU; a few steps are profiled (`nanigpt.measure.trace`); validation reports
nats/token, bits/byte and the gap to the dataset's known entropy floor.

Outputs in the run folder, each written atomically and in this order: `config.json` (resolved run +
provenance), `metrics.parquet`, `trace.json.gz`, and `summary.json` last, so a killed or failed run
never leaves a summary behind.

    python -m nanigpt.train --run-config JSON_OR_@PATH --train train.bin --val val.bin \\
        --ground-truth ground_truth.json --out results/runs/RUN_ID
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from nanigpt.io import atomic_path, read_json, write_json_atomic
from nanigpt.measure.hardware import mfu, peak_bf16_flops
from nanigpt.measure.provenance import collect_provenance
from nanigpt.measure.timers import StepTimer
from nanigpt.measure.trace import TraceWindow

log = logging.getLogger("nanigpt.train")

PHASES = ("data", "forward", "backward", "optimizer")
DEFAULT_PROFILE = {"enabled": True, "wait": 1, "warmup": 1, "active": 2}
DEFAULT_WSD_DECAY_FRAC = 0.2  # WSD: last 20% of steps decay (Hagele et al. 2024 use 10-20%)
ADAMW_BETAS = (0.9, 0.95)  # as nanoGPT / GPT-3


class RunConfigError(ValueError):
    """The run config is missing a key or has a value of the wrong type or range."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


# ---------------------------------------------------------------------------------------------
# Run config validation


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
TRAINING_KEYS = {
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


def validate_run(run: Any) -> dict[str, Any]:
    """Check a run config against docs/interfaces.md; return it with `profile` defaulted.

    Raises RunConfigError naming the key, the value and what was expected.
    """
    if not isinstance(run, dict):
        raise RunConfigError(f"run config must be a JSON object, got {type(run).__name__}")
    _check_keys(run, RUN_KEYS, "")
    _check_keys(run["model"], MODEL_KEYS, "model.")
    _check_keys(run["training"], TRAINING_KEYS, "training.")
    _check_keys(run["parallelism"], PARALLELISM_KEYS, "parallelism.")
    run = dict(run)
    if run.get("profile") is None:
        run["profile"] = dict(DEFAULT_PROFILE)
    if not isinstance(run["profile"], dict):
        raise RunConfigError(f"run config: 'profile' must be an object, got {run['profile']!r}")
    _check_keys(run["profile"], PROFILE_KEYS, "profile.")

    t = run["training"]
    _require(run["arch_kind"] in ("dense", "moe"), "arch_kind", run["arch_kind"], "dense or moe")
    _require(run["tokens"] > 0, "tokens", run["tokens"], "> 0")
    for key in ("seq_len", "batch_size", "grad_accum", "eval_batches"):
        _require(t[key] >= 1, f"training.{key}", t[key], ">= 1")
    _require(
        t["seq_len"] <= run["model"]["seq_len"],
        "training.seq_len",
        t["seq_len"],
        f"<= model.seq_len ({run['model']['seq_len']})",
    )
    _require(t["lr"] > 0, "training.lr", t["lr"], "> 0")
    _require(0 <= t["min_lr_frac"] <= 1, "training.min_lr_frac", t["min_lr_frac"], "in [0, 1]")
    _require(0 <= t["warmup_frac"] < 1, "training.warmup_frac", t["warmup_frac"], "in [0, 1)")
    _require(
        t["schedule"] in ("cosine", "wsd"), "training.schedule", t["schedule"], "cosine or wsd"
    )
    _require(t["weight_decay"] >= 0, "training.weight_decay", t["weight_decay"], ">= 0")
    _require(
        t["device"] in ("auto", "cpu", "cuda"), "training.device", t["device"], "auto, cpu or cuda"
    )
    _require(t["threads"] is None or t["threads"] >= 1, "training.threads", t["threads"], ">= 1")
    decay_frac = t.get("decay_frac", DEFAULT_WSD_DECAY_FRAC)
    _require(
        _is_number(decay_frac) and 0 < decay_frac <= 1,
        "training.decay_frac",
        decay_frac,
        "a number in (0, 1]",
    )
    for key in ("wait", "warmup", "active"):
        _require(run["profile"][key] >= 0, f"profile.{key}", run["profile"][key], ">= 0")
    par = run["parallelism"]
    _require(
        all(par[k] == 1 for k in PARALLELISM_KEYS),
        "parallelism",
        par,
        "all degrees 1 (this is the single-process trainer; nanigpt.parallel runs the others)",
    )
    return run


def parse_run_config(text: str) -> dict[str, Any]:
    """`--run-config` value: a JSON string, or `@path` to a JSON file."""
    if text.startswith("@"):
        return read_json(text[1:], what="run config file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RunConfigError(f"--run-config is not valid JSON ({e}); pass JSON or @path") from e


# ---------------------------------------------------------------------------------------------
# Learning-rate schedules


def lr_at(
    step: int,
    total_steps: int,
    *,
    lr: float,
    min_lr_frac: float,
    warmup_steps: int,
    schedule: str,
    decay_frac: float = DEFAULT_WSD_DECAY_FRAC,
) -> float:
    """Learning rate of 0-based `step` of `total_steps`.

    Linear warmup over `warmup_steps` (step 0 gets lr/warmup_steps), then
    - cosine: half a cosine from lr to lr*min_lr_frac, reached at the last step;
    - wsd (warmup-stable-decay, Hu et al. 2024 MiniCPM; Hagele et al. 2024): constant lr, then a
      linear decay to lr*min_lr_frac over the last `decay_frac` of the steps.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    min_lr = lr * min_lr_frac
    if schedule == "cosine":
        decay_steps = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps + 1) / decay_steps)
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    if schedule == "wsd":
        decay_steps = max(1, min(total_steps - warmup_steps, round(decay_frac * total_steps)))
        decay_start = total_steps - decay_steps
        if step < decay_start:
            return lr
        progress = min(1.0, (step - decay_start + 1) / decay_steps)
        return lr + (min_lr - lr) * progress
    raise ValueError(f"unknown schedule {schedule!r}: expected cosine or wsd")


# ---------------------------------------------------------------------------------------------
# Pieces of the loop


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunConfigError("run config: 'training.device' = 'cuda' but CUDA is not available")
    return torch.device(name)


def build_model(run: dict[str, Any]) -> tuple[torch.nn.Module, Any]:
    """The model of a run and its GPTConfig; a bad `model` section is a RunConfigError."""
    from nanigpt.model.gpt import GPT, GPTConfig

    try:
        cfg = GPTConfig.from_dict(run["model"])
    except (ValueError, TypeError) as e:
        raise RunConfigError(f"run config: {e}") from e
    return GPT(cfg), cfg


def count_flops(model_cfg: Any, seq_len: int) -> Any:
    """Parameter and FLOP accounting at the trained context length."""
    from nanigpt.model.flops import count

    return count(model_cfg, seq_len=seq_len)


def make_optimizer(model: torch.nn.Module, training: dict, device: torch.device):
    """AdamW; weight decay on matrices (dim >= 2) only, not on biases and norm gains (nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": training["weight_decay"]},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=training["lr"], betas=ADAMW_BETAS, eps=1e-8, fused=device.type == "cuda"
    )


def autocast_for(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _as_tensor(value: Any, device: torch.device) -> torch.Tensor:
    if value is None:
        return torch.zeros((), device=device)
    if isinstance(value, torch.Tensor):
        return value.float()
    return torch.tensor(float(value), device=device)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list, device: torch.device) -> float:
    """Mean validation cross-entropy in nats/token over fixed batches."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device, dtype=torch.float64)
    for x, y in batches:
        with autocast_for(device):
            out = model(x.to(device), y.to(device))
        total += out.loss.detach().double()
    if was_training:
        model.train()
    return float(total.item() / len(batches))


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated CUDA memory on a GPU; peak resident set size of the process on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


METRICS_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("tokens", pa.int64()),
        ("flops", pa.float64()),
        ("loss", pa.float64()),
        ("aux_loss", pa.float64()),
        ("lr", pa.float64()),
        ("grad_norm", pa.float64()),
        ("step_time_s", pa.float64()),
        *[(f"{phase}_s", pa.float64()) for phase in PHASES],
        ("other_s", pa.float64()),
        ("tokens_per_s", pa.float64()),
        ("mfu", pa.float64()),
        ("peak_memory_bytes", pa.int64()),
        ("profiled", pa.bool_()),
        ("val_loss", pa.float64()),
        ("val_bpb", pa.float64()),
        ("val_gap_bpb", pa.float64()),
    ]
)


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(rows, schema=METRICS_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


class Progress:
    """A tqdm bar on a terminal; log lines with rate and ETA otherwise (Snakemake logs, SLURM)."""

    def __init__(self, total_steps: int, tokens_per_step: int, run_id: str):
        self.total = total_steps
        self.tokens_per_step = tokens_per_step
        self.start = time.perf_counter()
        self.every = max(1, total_steps // 20)
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, desc=run_id, unit="step", dynamic_ncols=True)

    def update(self, step: int, loss: float, val_bpb: float | None) -> None:
        done = step + 1
        if self.bar is not None:
            postfix = {"loss": f"{loss:.4f}"}
            if val_bpb is not None:
                postfix["val_bpb"] = f"{val_bpb:.4f}"
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)
            return
        if done % self.every and done != self.total and val_bpb is None:
            return
        elapsed = time.perf_counter() - self.start
        rate = done * self.tokens_per_step / elapsed if elapsed > 0 else float("nan")
        eta = elapsed / done * (self.total - done)
        val = f" val_bpb {val_bpb:.4f}" if val_bpb is not None else ""
        message = (
            f"step {done}/{self.total} loss {loss:.4f}{val} | {rate:,.0f} tok/s | "
            f"elapsed {elapsed:.1f}s ETA {eta:.1f}s"
        )
        log.info(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Any,
    timer: StepTimer,
    device: torch.device,
    grad_accum: int,
    grad_clip: float | None,
) -> tuple[torch.Tensor, torch.Tensor, float, dict[str, float]]:
    """One optimizer step over `grad_accum` micro-batches, timed by phase.

    Returns the summed micro-batch losses and aux losses (tensors, not yet synchronised), the
    gradient norm before clipping, and the phase times.
    """
    timer.start_step()
    loss_sum = torch.zeros((), device=device)
    aux_sum = torch.zeros((), device=device)
    for _ in range(grad_accum):
        with timer.phase("data"):
            x, y = loader.next_batch()
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
        with timer.phase("forward"), autocast_for(device):
            out = model(x, y)
            aux = _as_tensor(out.aux_loss, device)
            objective = (out.loss + aux) / grad_accum
        with timer.phase("backward"):
            objective.backward()
        loss_sum += out.loss.detach().float()
        aux_sum += aux.detach()
    with timer.phase("optimizer"):
        max_norm = grad_clip if grad_clip else float("inf")  # inf: measure the norm, never clip
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    times = timer.end_step()
    return loss_sum, aux_sum, float(grad_norm), times


# ---------------------------------------------------------------------------------------------
# The run


def train(
    run: dict[str, Any],
    train_path: str | Path,
    val_path: str | Path,
    ground_truth_path: str | Path,
    out_dir: str | Path,
) -> dict[str, Any]:
    """Train one run; write config.json, metrics.parquet, trace.json.gz, summary.json; return the summary."""
    wall_start = time.perf_counter()
    run = validate_run(run)
    paths = {
        "train": Path(train_path),
        "val": Path(val_path),
        "ground_truth": Path(ground_truth_path),
    }
    for flag, path in (("--train", paths["train"]), ("--val", paths["val"])):
        if not path.is_file():
            raise FileNotFoundError(f"{flag} shard not found: {path}")
    ground_truth = read_json(paths["ground_truth"], what="ground truth file")
    if "floor_bits_per_byte" not in ground_truth:
        raise ValueError(f"ground truth file {paths['ground_truth']} has no 'floor_bits_per_byte'")
    floor_bpb = float(ground_truth["floor_bits_per_byte"])
    out_dir = Path(out_dir)

    from nanigpt.data.loader import BatchLoader
    from nanigpt.data.shards import read_shard

    t = run["training"]
    device = resolve_device(t["device"])
    if t["threads"]:
        torch.set_num_threads(t["threads"])
    torch.manual_seed(t["seed"])

    seq_len, batch_size, grad_accum = t["seq_len"], t["batch_size"], t["grad_accum"]
    tokens_per_step = seq_len * batch_size * grad_accum
    steps = math.ceil(run["tokens"] / tokens_per_step)
    warmup_steps = round(t["warmup_frac"] * steps)
    decay_frac = t.get("decay_frac", DEFAULT_WSD_DECAY_FRAC)
    eval_every = t["eval_every"] or 0

    model, model_cfg = build_model(run)
    model.to(device)
    accounting = count_flops(model_cfg, seq_len)
    params = accounting.params
    flops_per_token = float(accounting.train_flops_per_token)
    peak_flops = (
        peak_bf16_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    )
    optimizer = make_optimizer(model, t, device)
    step_model = torch.compile(model) if t["compile"] else model

    provenance = collect_provenance(run, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        out_dir / "config.json",
        {
            "run": run,
            "provenance": provenance,
            "inputs": {k: str(v) for k, v in paths.items()},
            "derived": {
                "device": str(device),
                "steps": steps,
                "tokens_per_step": tokens_per_step,
                "warmup_steps": warmup_steps,
                "flops_per_token": flops_per_token,
                "peak_flops": peak_flops,
            },
        },
    )

    train_loader = BatchLoader(
        paths["train"], seq_len, batch_size, t["seed"], impl=t.get("loader_impl", "python")
    )
    val_shard = read_shard(paths["val"])
    if val_shard.byte_count <= 0:
        raise ValueError(f"--val shard {paths['val']} encodes 0 bytes: bits/byte is undefined")
    val_tokens_per_byte = len(val_shard.tokens) / val_shard.byte_count
    val_loader = BatchLoader(val_shard, seq_len, batch_size, t["seed"])
    val_batches = list(val_loader.eval_batches(t["eval_batches"]))

    def bits_per_byte(nats_per_token: float) -> float:
        return nats_per_token * val_tokens_per_byte / math.log(2)

    message = (
        f"{run['run_id']}: {steps} steps x {tokens_per_step} tokens on {provenance['device']}, "
        f"{flops_per_token:.3g} FLOPs/token, floor {floor_bpb:.4f} bits/byte"
    )
    log.info(message)
    timer = StepTimer(device, PHASES)
    progress = Progress(steps, tokens_per_step, run["run_id"])
    rows: list[dict[str, Any]] = []
    metrics_path = out_dir / "metrics.parquet"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    profile = run["profile"]
    trace = TraceWindow(
        out_dir / "trace.json.gz",
        device,
        enabled=profile["enabled"],
        wait=profile["wait"],
        warmup=profile["warmup"],
        active=profile["active"],
        metadata={"run_id": run["run_id"], "device": provenance["device"]},
    )
    try:
        with trace:
            for step in range(steps):
                lr = lr_at(
                    step,
                    steps,
                    lr=t["lr"],
                    min_lr_frac=t["min_lr_frac"],
                    warmup_steps=warmup_steps,
                    schedule=t["schedule"],
                    decay_frac=decay_frac,
                )
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_sum, aux_sum, grad_norm, times = train_step(
                    step_model, optimizer, train_loader, timer, device, grad_accum, t["grad_clip"]
                )
                loss = loss_sum.item() / grad_accum
                if not math.isfinite(loss):
                    raise NonFiniteLossError(
                        f"{run['run_id']}: loss is {loss} at step {step} (of {steps}, lr {lr:.3g}); "
                        f"stopping the run"
                    )
                profiled = trace.recording(step)
                trace.step()
                tokens_per_s = tokens_per_step / times["step_time_s"]
                row = {
                    "step": step,
                    "tokens": (step + 1) * tokens_per_step,
                    "flops": (step + 1) * tokens_per_step * flops_per_token,
                    "loss": loss,
                    "aux_loss": aux_sum.item() / grad_accum,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    **times,
                    "tokens_per_s": tokens_per_s,
                    "mfu": mfu(flops_per_token, tokens_per_s, peak_flops),
                    "peak_memory_bytes": peak_memory_bytes(device),
                    "profiled": profiled,
                    "val_loss": None,
                    "val_bpb": None,
                    "val_gap_bpb": None,
                }
                is_last = step == steps - 1
                if is_last or (eval_every and (step + 1) % eval_every == 0):
                    val_loss = evaluate(step_model, val_batches, device)
                    val_bpb = bits_per_byte(val_loss)
                    row.update(val_loss=val_loss, val_bpb=val_bpb, val_gap_bpb=val_bpb - floor_bpb)
                rows.append(row)
                progress.update(step, loss, row["val_bpb"])
                if row["val_loss"] is not None and not is_last:
                    write_metrics(metrics_path, rows)  # progress visible during long runs
    except NonFiniteLossError:
        if rows:
            write_metrics(metrics_path, rows)
        raise
    finally:
        progress.close()
    write_metrics(metrics_path, rows)

    # Steady-state throughput: median step time over steps without profiler overhead, after the
    # first (allocator warm-up, compilation). Falls back to all steps for very short runs.
    steady = [r["step_time_s"] for r in rows[1:] if not r["profiled"]] or [
        r["step_time_s"] for r in rows
    ]
    step_time_median = statistics.median(steady)
    tokens_per_s = tokens_per_step / step_time_median
    tokens_trained = steps * tokens_per_step
    final = rows[-1]
    summary = {
        "run_id": run["run_id"],
        "dataset": run["dataset"],
        "arch": run["arch"],
        "arch_kind": run["arch_kind"],
        "size": run["size"],
        "parallelism_name": run["parallelism_name"],
        "tokens_target": run["tokens"],
        "tokens_trained": tokens_trained,
        "steps": steps,
        "params_total": params.total,
        "params_active": params.active,
        "params_embedding": params.embedding,
        "params_non_embedding_total": params.non_embedding_total,
        "params_non_embedding_active": params.non_embedding_active,
        "flops_per_token": flops_per_token,
        "flops_total": flops_per_token * tokens_trained,
        # Kaplan et al. 2020's C = 6ND with N the non-embedding (active) parameters.
        "flops_6nd": 6.0 * params.non_embedding_active * tokens_trained,
        "final_val_loss": final["val_loss"],
        "final_val_bpb": final["val_bpb"],
        "floor_bpb": floor_bpb,
        "gap_bpb": final["val_gap_bpb"],
        "wall_s": time.perf_counter() - wall_start,
        "tokens_per_s": tokens_per_s,
        "mfu": mfu(flops_per_token, tokens_per_s, peak_flops),
        "device": provenance["device"],
        "step_time_s_median": step_time_median,
        "peak_memory_bytes": max(r["peak_memory_bytes"] for r in rows),
        "provenance": provenance,
    }
    write_json_atomic(out_dir / "summary.json", summary)
    message = (
        f"{run['run_id']}: val {summary['final_val_loss']:.4f} nats/token, "
        f"{summary['final_val_bpb']:.4f} bits/byte (floor {floor_bpb:.4f}, gap {summary['gap_bpb']:.4f}), "
        f"{tokens_per_s:,.0f} tok/s, wall {summary['wall_s']:.1f}s"
    )
    log.info(message)
    return summary


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--run-config", required=True, help="run config as JSON, or @path to a JSON file"
    )
    parser.add_argument("--train", required=True, help="training token shard (.bin)")
    parser.add_argument("--val", required=True, help="validation token shard (.bin)")
    parser.add_argument("--ground-truth", required=True, help="ground_truth.json of the dataset")
    parser.add_argument("--out", required=True, help="run folder to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        run = parse_run_config(args.run_config)
        train(run, args.train, args.val, args.ground_truth, args.out)
    except (RunConfigError, FileNotFoundError) as e:
        print(f"nanigpt.train: error: {e}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, ValueError) as e:
        print(f"nanigpt.train: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
