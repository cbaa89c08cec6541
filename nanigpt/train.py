"""The training loop, with measurement built in: where does time go in a training step, how much of
it is communication, and how close does each run get to its data's loss floor? (project questions 1
and 2)

One run (`docs/interfaces.md`, "A run") trains in one process, or in `dp*fsdp*tp*ep` processes under
torchrun when its parallelism says so (`python -m nanigpt.launch --nproc N -- nanigpt.train ...`):
the model is built on every rank with the same seed and handed to `nanigpt.parallel.parallelize`,
every rank draws the same global batch and keeps its rows (`local_batch`), and rank 0 writes the
outputs. AdamW (fused on CUDA), warmup + cosine or warmup-stable-decay (WSD) learning rate, gradient
clipping and accumulation, bf16 autocast on the GPU, optional `torch.compile`. On the CPU a run is
deterministic: the same seed gives the same losses, also across a kill and a resume.

Every step is timed by phase (data, forward, backward, comm, optimizer: `nanigpt.measure.timers`;
`comm` is the wait for outstanding gradient collectives at the end of backward) and written to
`metrics.parquet` with its counted FLOPs and MFU, the ledger's communication (bytes, measured,
blocked = exposed, and alpha-beta predicted seconds; null in one process) and the MoE router's
health (dropped fraction, router entropy, load coefficient of variation across experts, each the
mean over MoE layers; null for dense models). A few steps are profiled (`nanigpt.measure.trace`);
validation reports nats/token, bits/byte and the gap to the dataset's known entropy floor.

Checkpoints (`nanigpt.checkpoint`): every `training.checkpoint_every` steps (default: 10 per run; 0
turns them off) the run writes `checkpoint.pt` (`training.checkpoint_format: torch`, synchronous) or
`checkpoint.safetensors` (`rust`: written on a Rust thread while training goes on); a trainer that starts and finds one with the same
run fingerprint resumes from it (and logs the step), one with another fingerprint is ignored with a
warning (the run starts afresh and overwrites it), and a corrupt, truncated or foreign one stops the
run with an error naming the file: it is never silently discarded; delete it to start afresh. On
success the checkpoint is deleted (model.pt holds the weights). Distributed runs checkpoint under
the replicated strategies (DDP, built-in or hand-written: rank 0 saves); under sharded ones (ZeRO,
FSDP2, TP, EP) checkpointing is off, with the reason logged.

Outputs in the run folder, each written atomically and in this order: `config.json` (resolved run +
provenance), `metrics.parquet`, `trace.json.gz`, `model.pt` (`torch.save` of the unwrapped model's
full state_dict, rebuilt with `GPTConfig.from_dict(config["run"]["model"])`), `comm.json` (only when
distributed: per step predicted vs measured communication), and `summary.json` last, so a killed or
failed run never leaves a summary behind. With `training.snapshot_every` > 0, also
`snapshots/step_{steps_done:06d}.pt` in model.pt's format every that many steps.

    python -m nanigpt.train --run-config JSON_OR_@PATH --train train.bin --val val.bin \\
        --ground-truth ground_truth.json --out results/runs/RUN_ID
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from nanigpt import checkpoint
from nanigpt.io import OutputWriteError, atomic_path, ensure_dir, read_json, write_json_atomic
from nanigpt.measure.hardware import mfu, peak_bf16_flops
from nanigpt.measure.provenance import collect_provenance
from nanigpt.measure.timers import StepTimer
from nanigpt.measure.trace import TraceWindow
from nanigpt.model.moe import update_router_biases
from nanigpt.schedule import DEFAULT_WSD_DECAY_FRAC, SCHEDULES, lr_at

log = logging.getLogger("nanigpt.train")

PHASES = ("data", "forward", "backward", "comm", "optimizer")
DEFAULT_PROFILE = {"enabled": True, "wait": 1, "warmup": 1, "active": 2}
ADAMW_BETAS = (0.9, 0.95)  # as nanoGPT / GPT-3
DEFAULT_CHECKPOINTS_PER_RUN = 10  # training.checkpoint_every unset: every 10% of the steps
DEFAULT_CHECKPOINT_FORMAT = "rust"  # training.checkpoint_format unset (README: checkpoint bench)
# Strategies whose full training state sits on rank 0 (replicated weights and optimizer state).
CHECKPOINT_STRATEGIES = ("single", "ddp_builtin", "ddp_manual")
# FSDP2 and DTensor collectives are recorded by a dispatch mode that costs host time on every op:
# the ledger intercepts them on the first few steps only (their bytes repeat step to step).
INTERCEPT_STEPS = 3
VAL_SEED = 0  # the validation batches' seed, whatever training.seed is
COMM_RECORD_STEPS = 3  # collectives listed one by one in comm.json (the first steps of a process)


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
OPTIONAL_TRAINING_KEYS = {
    "checkpoint_every": "int?",
    "snapshot_every": "int?",
    "warmup_steps": "int?",
}


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
    _require(t["schedule"] in SCHEDULES, "training.schedule", t["schedule"], " or ".join(SCHEDULES))
    _require(t["weight_decay"] >= 0, "training.weight_decay", t["weight_decay"], ">= 0")
    _require(
        t["device"] in ("auto", "cpu", "cuda"), "training.device", t["device"], "auto, cpu or cuda"
    )
    _require(t["threads"] is None or t["threads"] >= 1, "training.threads", t["threads"], ">= 1")
    fmt = t.get("checkpoint_format", DEFAULT_CHECKPOINT_FORMAT)
    _require(fmt in checkpoint.FILES, "training.checkpoint_format", fmt, "torch or rust")
    decay_frac = t.get("decay_frac", DEFAULT_WSD_DECAY_FRAC)
    _require(
        _is_number(decay_frac) and 0 < decay_frac <= 1,
        "training.decay_frac",
        decay_frac,
        "a number in (0, 1]",
    )
    for key in ("wait", "warmup", "active"):
        _require(run["profile"][key] >= 0, f"profile.{key}", run["profile"][key], ">= 0")
    for key, kind in OPTIONAL_TRAINING_KEYS.items():
        if t.get(key) is not None:
            _check_keys(t, {key: kind}, "training.")
            _require(t[key] >= 0, f"training.{key}", t[key], ">= 0")
    from nanigpt.parallel.apply import validate_parallelism

    try:
        validate_parallelism(run["parallelism"], run["model"], batch_size=t["batch_size"])
    except (ValueError, TypeError) as e:
        raise RunConfigError(f"run config: {e}") from e
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
        # the ledger's collectives of the step (null in one process; see Ledger.step_metrics)
        ("comm_collectives", pa.int64()),
        ("comm_bytes", pa.int64()),
        ("comm_wire_bytes", pa.float64()),
        ("comm_measured_s", pa.float64()),
        ("comm_blocked_s", pa.float64()),
        ("comm_predicted_s", pa.float64()),
        # the router, mean over MoE layers and micro-batches (null for dense models)
        ("moe_dropped_frac", pa.float64()),
        ("moe_router_entropy", pa.float64()),
        ("moe_load_cv", pa.float64()),
    ]
)
COMM_COLUMNS = [n for n in METRICS_SCHEMA.names if n.startswith("comm_") and n != "comm_s"]
MOE_COLUMNS = ["moe_dropped_frac", "moe_router_entropy", "moe_load_cv"]


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(rows, schema=METRICS_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


class Progress:
    """A tqdm bar on a terminal; log lines with rate and ETA otherwise (Snakemake logs, SLURM)."""

    def __init__(self, total_steps: int, tokens_per_step: int, run_id: str, start_step: int = 0):
        self.total = total_steps
        self.tokens_per_step = tokens_per_step
        self.start = time.perf_counter()
        self.start_step = start_step
        self.every = max(1, total_steps // 20)
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_steps, initial=start_step, desc=run_id, unit="step", dynamic_ncols=True
            )

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
        here = done - self.start_step  # steps this process trained (a resumed run starts later)
        rate = here * self.tokens_per_step / elapsed if elapsed > 0 else float("nan")
        eta = elapsed / here * (self.total - done)
        val = f" val_bpb {val_bpb:.4f}" if val_bpb is not None else ""
        message = (
            f"step {done}/{self.total} loss {loss:.4f}{val} | {rate:,.0f} tok/s | "
            f"elapsed {elapsed:.1f}s ETA {eta:.1f}s"
        )
        log.info(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _MoEStats:
    """Sums the router statistics of the MoE layers over a step's micro-batches."""

    def __init__(self, device: torch.device):
        self.total = torch.zeros(3, device=device, dtype=torch.float64)
        self.count = 0

    def add(self, moe_stats: list[dict[str, Any]]) -> None:
        for stats in moe_stats:
            load = stats["load"].double()
            cv = load.std(unbiased=False) / load.mean().clamp_min(1e-12)
            self.total += torch.stack(
                [stats["dropped_frac"].double(), stats["router_entropy"].double(), cv]
            )
            self.count += 1

    def means(self) -> torch.Tensor | None:
        return self.total / self.count if self.count else None


def train_step(
    par: Any,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Any,
    timer: StepTimer,
    device: torch.device,
    grad_accum: int,
    grad_clip: float | None,
    intercept: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, Any, Callable[[], dict[str, float]], torch.Tensor | None]:
    """One optimizer step over `grad_accum` micro-batches, timed by phase; no host sync.

    `par` is the `nanigpt.parallel.apply.Parallelized` of the run (one process: the "single"
    setting, whose calls do nothing but the gradient clipping). Returns this rank's summed
    micro-batch losses and aux losses (tensors, not yet synchronised), the global gradient norm
    before clipping (a tensor), a function that reads the phase times (waiting for the device),
    and the MoE router statistics (None for a dense model).
    """
    timer.start_step()
    loss_sum = torch.zeros((), device=device)
    aux_sum = torch.zeros((), device=device)
    moe = _MoEStats(device)
    with par.forward_context() if intercept else contextlib.nullcontext():
        for micro in range(grad_accum):
            with timer.phase("data"):
                x, y = par.local_batch(*loader.next_batch())
                if device.type == "cuda":  # from pageable memory the copy would wait for the GPU
                    x, y = x.pin_memory(), y.pin_memory()
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
            # accumulate without communication; the last micro-batch's backward syncs
            last = micro == grad_accum - 1
            with contextlib.nullcontext() if last else par.no_sync():
                with timer.phase("forward"), autocast_for(device):
                    out = model(x, y)
                    aux = _as_tensor(out.aux_loss, device)
                    objective = (out.loss + aux) / grad_accum
                with timer.phase("backward"):
                    objective.backward()
            loss_sum += out.loss.detach().float()
            aux_sum += aux.detach()
            moe.add(out.moe_stats or [])
        with timer.phase("comm"):
            par.sync_grads()  # waits for the gradient collectives still in flight (exposed time)
    with timer.phase("optimizer"):
        grad_norm = par.clip_grad_norm_(grad_clip if grad_clip else None)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        update_router_biases(model)  # aux-loss-free balancing: once per optimizer step
    read_times = timer.end_step_deferred()
    par.end_step()
    return loss_sum, aux_sum, grad_norm, read_times, moe.means()


def collective_device(backend: str) -> torch.device:
    """Where a tensor must live for the default group's collectives: NCCL reduces only CUDA
    tensors (a metric computed on the host, like the validation loss, must move), gloo CPU ones."""
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean_over_ranks(values: torch.Tensor) -> list[float]:
    """Mean of per-rank metric values over all ranks (one all_reduce, outside the ledger: logging
    is not training communication). One process: the values themselves."""
    values = values.detach().double()
    if dist.is_initialized() and dist.get_world_size() > 1:
        values = values.to(collective_device(dist.get_backend()), copy=True)
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values.cpu().tolist()


# Manually tensor-parallel weights split along dim 1 (row-parallel); the others along dim 0.
_ROW_PARALLEL = ("attn.wo.weight", "mlp.w_down.weight")


def full_state_dict(model: torch.nn.Module, par: Any) -> dict[str, torch.Tensor]:
    """The unwrapped model's full state_dict on the CPU, gathered from every rank if sharded.

    Collective under a sharded strategy: every rank must call it. DTensor weights (FSDP2, DTensor
    TP) are gathered with `full_tensor`; hand-sharded ones (manual TP, EP) with an all_gather over
    their mesh dim (`par.sharded_dims`), concatenated along the dim they were sliced on.
    """
    from torch.distributed.tensor import DTensor

    out = {}
    for name, value in model.state_dict().items():
        t = value.detach()
        if isinstance(t, DTensor):
            t = t.full_tensor()
        for dim in par.sharded_dims.get(name, ()):
            group = par.mesh[dim].get_group()
            parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
            dist.all_gather(parts, t.contiguous(), group=group)
            axis = 1 if dim == "tp" and name.endswith(_ROW_PARALLEL) else 0
            t = torch.cat(parts, dim=axis)
        out[name] = t.cpu().clone()
    return out


def save_weights(path: Path, model: torch.nn.Module, par: Any, is_main: bool) -> None:
    """`torch.save(state_dict)` of the full unwrapped model, atomically, by rank 0."""
    state = full_state_dict(model, par)
    if is_main:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)


class _NoTrace:
    """The profiler window of ranks other than 0 (only rank 0 profiles and writes the trace)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def recording(self, step: int) -> bool:
        return False

    def step(self) -> None:
        return None


# ---------------------------------------------------------------------------------------------
# The run


def _die_with_launcher() -> None:
    """Under torchrun, make this worker die with its launcher (Linux `PR_SET_PDEATHSIG`).

    torchrun starts its workers in sessions of their own, so a `kill -9` of the job's process group
    (Snakemake's, a test's) kills torchrun but leaves the ranks training on, writing into the run
    folder while the rerun starts. With this, a dead launcher takes its ranks with it.
    """
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the launcher died before the call above
        os._exit(1)


def _start_processes(run: dict[str, Any]) -> tuple[Any, int, int, torch.device]:
    """(parallel setting, rank, world size, device); starts the process group when distributed."""
    from nanigpt.launch import world_size
    from nanigpt.parallel.mesh import ParallelSetting, init_distributed

    t = run["training"]
    setting = ParallelSetting.from_dict(run["parallelism"])
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != world_size(run["parallelism"]):
        raise RunConfigError(
            f"run config: parallelism {setting.as_dict()} needs {setting.world_size} processes, "
            f"but {launched} were started; launch with `python -m nanigpt.launch --nproc "
            f"{setting.world_size} -- nanigpt.train ...`"
        )
    if setting.world_size == 1:
        return setting, 0, 1, resolve_device(t["device"])
    if t["device"] != "auto":
        os.environ.setdefault("NANIGPT_DEVICE", t["device"])
    if t["device"] == "cuda" and not torch.cuda.is_available():
        raise RunConfigError("run config: 'training.device' = 'cuda' but CUDA is not available")
    _die_with_launcher()
    rank, world, device = init_distributed()
    return setting, rank, world, device


def _branch_state(path: Path, fingerprint: str) -> dict[str, Any]:
    """The stable run's checkpoint a cooldown branch starts from (checked: its fingerprint)."""
    state = checkpoint.load(path)  # CheckpointError on a missing, foreign or corrupt file
    if state["fingerprint"] != fingerprint:
        raise checkpoint.CheckpointError(
            f"{path}: written by other stable-run settings or inputs (fingerprint "
            f"{state['fingerprint'][:12]} != {fingerprint[:12]}); rerun the stable run"
        )
    return state


def train(
    run: dict[str, Any],
    train_path: str | Path,
    val_path: str | Path,
    ground_truth_path: str | Path,
    out_dir: str | Path,
    *,
    branch_from: tuple[Path, str] | None = None,
    keep_checkpoints: dict[int, Path] | None = None,
) -> dict[str, Any]:
    """Train one run; write its outputs (module docstring) from rank 0; return the summary.

    WSD cooldown branches (`nanigpt.wsd`): `branch_from` = (checkpoint, fingerprint) starts the run
    from another run's checkpoint, which must carry that fingerprint (the stable run's), when the
    run has no checkpoint of its own; `keep_checkpoints` = {step: path} also saves the training
    state after those steps (the last included) to files that outlive the run.
    """
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
    # Real text has no known floor (null): losses are still reported, gaps are null.
    floor = ground_truth.get("floor_bits_per_byte")
    floor_bpb = None if floor is None else float(floor)
    floor_text = "unknown" if floor_bpb is None else f"{floor_bpb:.4f}"
    out_dir = Path(out_dir)

    from nanigpt.data.loader import BatchLoader
    from nanigpt.data.shards import read_shard
    from nanigpt.parallel.apply import Parallelized, parallelize
    from nanigpt.parallel.cost_model import calibrate
    from nanigpt.parallel.ledger import Ledger
    from nanigpt.parallel.mesh import build_mesh

    t = run["training"]
    setting, rank, world, device = _start_processes(run)
    is_main = rank == 0
    if t["threads"]:
        torch.set_num_threads(t["threads"])
    torch.manual_seed(t["seed"])  # every rank builds the same initial weights

    seq_len, batch_size, grad_accum = t["seq_len"], t["batch_size"], t["grad_accum"]
    tokens_per_step = seq_len * batch_size * grad_accum  # the global batch
    steps = math.ceil(run["tokens"] / tokens_per_step)
    warmup_steps = t.get("warmup_steps")  # set for WSD runs: the same for every branch
    if warmup_steps is None:
        warmup_steps = round(t["warmup_frac"] * steps)
    decay_frac = t.get("decay_frac", DEFAULT_WSD_DECAY_FRAC)
    eval_every = t["eval_every"] or 0
    checkpoint_every = t.get("checkpoint_every")
    if checkpoint_every is None:
        checkpoint_every = max(1, math.ceil(steps / DEFAULT_CHECKPOINTS_PER_RUN))
    snapshot_every = t.get("snapshot_every") or 0

    model, model_cfg = build_model(run)
    model.to(device)
    accounting = count_flops(model_cfg, seq_len)
    params = accounting.params
    flops_per_token = float(accounting.train_flops_per_token)
    peak_flops = (
        peak_bf16_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    )

    # --- resume ----------------------------------------------------------------------------
    checkpoint_format = t.get("checkpoint_format", DEFAULT_CHECKPOINT_FORMAT)
    checkpoint_path = out_dir / checkpoint.FILES[checkpoint_format]
    resume_path = checkpoint.latest(out_dir) or checkpoint_path
    fingerprint = checkpoint.run_fingerprint(run, paths)
    can_checkpoint = setting.strategy in CHECKPOINT_STRATEGIES
    if not can_checkpoint and is_main:
        message = (
            f"{run['run_id']}: checkpointing is off under strategy {setting.strategy!r}: its "
            f"weights or optimizer state are sharded over the ranks, and only the replicated "
            f"strategies {list(CHECKPOINT_STRATEGIES)} save from rank 0; a killed run restarts"
        )
        log.warning(message)
    state = None
    if can_checkpoint and resume_path.exists():
        state = checkpoint.load(resume_path)  # CheckpointError: refuse, never silently restart
        if state["fingerprint"] != fingerprint:
            if is_main:
                message = (
                    f"{run['run_id']}: ignoring {resume_path}: it was written for other run "
                    f"settings or inputs (fingerprint {state['fingerprint'][:12]} != "
                    f"{fingerprint[:12]}); starting from step 0"
                )
                log.warning(message)
            state = None
    if state is None and branch_from is not None:
        state = _branch_state(*branch_from)
    start_step = state["step"] if state is not None else 0
    if world > 1:  # every rank read the same file; make sure they agree before training
        agree = torch.tensor([start_step, -start_step], dtype=torch.int64, device=device)
        dist.all_reduce(agree, op=dist.ReduceOp.MAX)
        if agree[0] != -agree[1]:
            raise checkpoint.CheckpointError(
                f"{resume_path}: ranks disagree on the step to resume from "
                f"({-int(agree[1])}..{int(agree[0])})"
            )
    if state is not None:
        model.load_state_dict(state["model"])

    # --- parallelism -----------------------------------------------------------------------
    ledger = Ledger(device)
    if world == 1:
        from nanigpt.parallel.mesh import ParallelSetting

        par = Parallelized(model, ParallelSetting(), None, ledger)
    else:
        mesh = build_mesh(setting, device.type)
        par = parallelize(model, setting, mesh, ledger)
    fused = device.type == "cuda" and setting.strategy in CHECKPOINT_STRATEGIES
    optimizer = par.make_optimizer(
        lr=t["lr"], weight_decay=t["weight_decay"], betas=ADAMW_BETAS, fused=fused or None
    )
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    link = calibrate(None, device) if world > 1 else None  # alpha-beta fit on this world's links
    step_model = torch.compile(par.model) if t["compile"] else par.model

    provenance = collect_provenance(run, device)
    provenance["kernels"] = model_cfg.kernel_impls  # which implementation ran each kernel
    derived = {
        "device": str(device),
        "steps": steps,
        "tokens_per_step": tokens_per_step,
        "warmup_steps": warmup_steps,
        "flops_per_token": flops_per_token,
        "peak_flops": peak_flops,
        "world_size": world,
        "strategy": setting.strategy,
        "checkpoint_every": checkpoint_every if can_checkpoint else 0,
        "snapshot_every": snapshot_every,
        "checkpoint_format": checkpoint_format,
    }
    if is_main:
        ensure_dir(out_dir)
        for stale in out_dir.glob(".*.tmp"):  # temp files of a killed attempt (nanigpt.io)
            stale.unlink(missing_ok=True)
        write_json_atomic(
            out_dir / "config.json",
            {
                "run": run,
                "provenance": provenance,
                "inputs": {k: str(v) for k, v in paths.items()},
                "derived": derived,
            },
        )

    train_loader = BatchLoader(
        paths["train"], seq_len, batch_size, t["seed"], impl=t.get("loader_impl", "python")
    )
    if state is not None:
        checkpoint.restore_loader(train_loader, state["loader"])
        checkpoint.set_rng_state(state["rng"])
    val_shard = read_shard(paths["val"])
    if val_shard.byte_count <= 0:
        raise ValueError(f"--val shard {paths['val']} encodes 0 bytes: bits/byte is undefined")
    val_tokens_per_byte = len(val_shard.tokens) / val_shard.byte_count
    # The same validation batches for every training seed (seed 0's, as before seeds were a
    # sweep dimension): seeds vary the initial weights and the data order, not the measurement.
    val_loader = BatchLoader(val_shard, seq_len, batch_size, VAL_SEED)
    val_batches = list(val_loader.eval_batches(t["eval_batches"]))

    def bits_per_byte(nats_per_token: float) -> float:
        return nats_per_token * val_tokens_per_byte / math.log(2)

    if is_main:
        message = (
            f"{run['run_id']}: {steps} steps x {tokens_per_step} tokens on {provenance['device']}"
            f"{f' x {world} ranks ({setting.strategy})' if world > 1 else ''}, "
            f"{flops_per_token:.3g} FLOPs/token, floor {floor_text} bits/byte"
        )
        log.info(message)
        if state is not None:
            message = (
                f"{run['run_id']}: resuming from {resume_path} at step {start_step}/{steps} "
                f"({start_step * tokens_per_step} tokens trained)"
            )
            log.info(message)
    timer = StepTimer(device, PHASES)
    progress = Progress(steps, tokens_per_step, run["run_id"], start_step) if is_main else None
    rows: list[dict[str, Any]] = list(state["metrics"]) if state is not None else []
    wall_before = float(state["wall_s"]) if state is not None else 0.0
    metrics_path = out_dir / "metrics.parquet"
    trace_path = out_dir / "trace.json.gz"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    profile = run["profile"]
    trace_offset = 0  # a run resumed before its window closed profiles the window after resuming
    if not is_main:
        trace: Any = _NoTrace()
    else:
        trace_done = state is not None and state.get("trace") is not None
        if trace_done:
            from nanigpt.io import write_bytes_atomic

            write_bytes_atomic(trace_path, state["trace"].numpy().tobytes())
        elif state is not None and profile["enabled"]:
            trace_offset = start_step
        trace = TraceWindow(
            trace_path,
            device,
            enabled=profile["enabled"] and not trace_done,
            wait=profile["wait"],
            warmup=profile["warmup"],
            active=profile["active"],
            metadata={"run_id": run["run_id"], "device": provenance["device"]},
        )
        trace.written = trace_done
    ledger.step = start_step
    records: list[dict[str, Any]] = []  # comm.json's per-collective list (first steps)

    from nanigpt.checkpoint_rust import Writer

    rust_writer = Writer()

    def save_checkpoint(steps_done: int, branch_point: Path | None = None) -> None:
        """The periodic checkpoint in the run's format, or (`branch_point`) a WSD branch point:
        always the synchronous torch format, since a cooldown reads it next in this process."""
        trace_bytes = None
        if getattr(trace, "written", False) and trace_path.exists():
            trace_bytes = torch.frombuffer(bytearray(trace_path.read_bytes()), dtype=torch.uint8)
        payload = {
            "fingerprint": fingerprint,
            "run_id": run["run_id"],
            "step": steps_done,
            "steps": steps,
            "tokens": steps_done * tokens_per_step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": {
                "step": steps_done,
                "steps": steps,
                "warmup_steps": warmup_steps,
                "schedule": t["schedule"],
                "decay_frac": decay_frac,
            },
            "rng": checkpoint.rng_state(),
            "loader": checkpoint.loader_state(train_loader, steps_done * grad_accum),
            "metrics": rows,
            "wall_s": wall_before + time.perf_counter() - wall_start,
            "trace": trace_bytes,
            "parallelism": setting.as_dict(),
        }
        if branch_point is not None or checkpoint_format == "torch":
            path = branch_point or checkpoint_path
            size = checkpoint.save(path, payload)
            message = f"{run['run_id']}: checkpoint at step {steps_done} ({size / 1e6:.1f} MB)"
        else:  # the loop waits for the snapshot only; the write's error surfaces at the next wait
            started = time.perf_counter()
            rust_writer.save(checkpoint_path, payload)
            message = (
                f"{run['run_id']}: checkpoint at step {steps_done} started (snapshot "
                f"{time.perf_counter() - started:.3f}s; written in the background)"
            )
        log.info(message)

    def finish_step(step: int, lr: float, step_out: tuple, profiled: bool, peak: int) -> dict:
        """The metrics row of a trained step (reads its device values: waits for that step)."""
        loss_sum, aux_sum, grad_norm, read_times, moe = step_out
        times = read_times()
        local = torch.stack([loss_sum.double(), aux_sum.double()]) / grad_accum
        if moe is not None:
            local = torch.cat([local, moe])
        reduced = mean_over_ranks(local)
        loss = reduced[0]
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"{run['run_id']}: loss is {loss} at step {step} (of {steps}, lr {lr:.3g}); "
                f"stopping the run"
            )
        tokens_per_s = tokens_per_step / times["step_time_s"]
        comm = dict.fromkeys(COMM_COLUMNS)
        if world > 1:
            comm = ledger.step_metrics(step, link)
            if not par.intercepting or step - start_step < INTERCEPT_STEPS:
                comm = {k: comm[k] for k in COMM_COLUMNS}
            else:  # library collectives not recorded on this step: unknown, not zero
                comm = dict.fromkeys(COMM_COLUMNS)
            if len(records) < 100_000 and step - start_step < COMM_RECORD_STEPS:
                records.extend(_record_dicts(ledger.step_records(step)))
            ledger.clear()
        row = {
            "step": step,
            "tokens": (step + 1) * tokens_per_step,
            "flops": (step + 1) * tokens_per_step * flops_per_token,
            "loss": loss,
            "aux_loss": reduced[1],
            "lr": lr,
            "grad_norm": float(grad_norm),
            **times,
            "tokens_per_s": tokens_per_s,
            "mfu": mfu(flops_per_token, tokens_per_s, peak_flops),
            "peak_memory_bytes": peak,
            "profiled": profiled,
            "val_loss": None,
            "val_bpb": None,
            "val_gap_bpb": None,
            **comm,
            **dict(zip(MOE_COLUMNS, reduced[2:] or [None] * 3, strict=True)),
        }
        rows.append(row)
        return row

    pending = None  # the last trained step whose metrics are not read yet
    try:
        with trace:
            for step in range(start_step, steps):
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
                intercept = par.intercepting and step - start_step < INTERCEPT_STEPS
                step_out = train_step(
                    par,
                    step_model,
                    optimizer,
                    train_loader,
                    timer,
                    device,
                    grad_accum,
                    t["grad_clip"],
                    intercept=intercept,
                )
                profiled = trace.recording(step - trace_offset)
                trace.step()
                # Metrics are read one step late (the host queues step N+1 before waiting for N),
                # and at once before eval, snapshots, checkpoints, the last step, and with ranks.
                done = (step, lr, step_out, profiled, peak_memory_bytes(device))
                if pending is not None:
                    lagged = finish_step(*pending)
                    if progress is not None:
                        progress.update(lagged["step"], lagged["loss"], None)
                pending = done
                is_last = step == steps - 1
                evaluating = is_last or (eval_every and (step + 1) % eval_every == 0)
                snapshotting = snapshot_every and (step + 1) % snapshot_every == 0
                checkpointing = (
                    can_checkpoint
                    and checkpoint_every
                    and is_main
                    and (step + 1) % checkpoint_every == 0
                    and not is_last
                )
                branching = bool(keep_checkpoints) and step + 1 in keep_checkpoints and is_main
                if not (evaluating or snapshotting or checkpointing or branching or world > 1):
                    continue
                row = finish_step(*pending)
                pending = None
                if evaluating:
                    val_loss = mean_over_ranks(
                        torch.tensor([evaluate(step_model, val_batches, device)])
                    )[0]
                    val_bpb = bits_per_byte(val_loss)
                    row.update(
                        val_loss=val_loss,
                        val_bpb=val_bpb,
                        val_gap_bpb=None if floor_bpb is None else val_bpb - floor_bpb,
                    )
                if progress is not None:
                    progress.update(step, row["loss"], row["val_bpb"])
                if is_main and row["val_loss"] is not None and not is_last:
                    write_metrics(metrics_path, rows)  # progress visible during long runs
                if snapshotting:
                    save_weights(
                        out_dir / "snapshots" / f"step_{step + 1:06d}.pt", model, par, is_main
                    )
                if branching:
                    save_checkpoint(step + 1, keep_checkpoints[step + 1])
                if checkpointing:
                    save_checkpoint(step + 1)
    except NonFiniteLossError:
        if rows and is_main:
            write_metrics(metrics_path, rows)
        raise
    finally:
        rust_writer.finish()  # let a write in flight land (the last good checkpoint)
        if progress is not None:
            progress.close()
    if is_main:
        write_metrics(metrics_path, rows)
    save_weights(out_dir / "model.pt", model, par, is_main)

    # Steady-state throughput: median step time over steps without profiler overhead, after the
    # first (allocator warm-up, compilation). Falls back to all steps for very short runs.
    steady_rows = [r for r in rows[1:] if not r["profiled"]] or rows
    step_time_median = statistics.median(r["step_time_s"] for r in steady_rows)
    tokens_per_s = tokens_per_step / step_time_median
    tokens_trained = steps * tokens_per_step
    final = rows[-1]

    def median_of(key: str) -> float | None:
        values = [r[key] for r in steady_rows if r.get(key) is not None]
        return statistics.median(values) if values else None

    if world > 1 and is_main:
        _write_comm_report(out_dir / "comm.json", run, setting, par, link, rows, records)
    summary = {
        "run_id": run["run_id"],
        "dataset": run["dataset"],
        "arch": run["arch"],
        "arch_kind": run["arch_kind"],
        "size": run["size"],
        "parallelism_name": run["parallelism_name"],
        "seed": run["training"]["seed"],  # the run's training seed (a sweep's `seeds` vary it)
        "tokens_target": run["tokens"],
        "tokens_trained": tokens_trained,
        "steps": steps,
        "params_total": params.total,
        "params_active": params.active,
        "params_embedding": params.embedding,
        "params_non_embedding_total": params.non_embedding_total,
        "params_non_embedding_active": params.non_embedding_active,
        "flops_per_token": flops_per_token,
        # DeepSeek LLM's M (arXiv 2401.02954): training FLOPs/token without the vocabulary's.
        "flops_per_token_non_embedding": flops_per_token
        - accounting.train_by_component["lm_head"]
        - accounting.train_by_component["embedding"],
        "flops_total": flops_per_token * tokens_trained,
        # Kaplan et al. 2020's C = 6ND with N the non-embedding (active) parameters.
        "flops_6nd": 6.0 * params.non_embedding_active * tokens_trained,
        "final_val_loss": final["val_loss"],
        "final_val_bpb": final["val_bpb"],
        "floor_bpb": floor_bpb,
        "gap_bpb": final["val_gap_bpb"],
        "wall_s": wall_before + time.perf_counter() - wall_start,
        "tokens_per_s": tokens_per_s,
        "mfu": mfu(flops_per_token, tokens_per_s, peak_flops),
        "device": provenance["device"],
        "step_time_s_median": step_time_median,
        "peak_memory_bytes": max(r["peak_memory_bytes"] for r in rows),
        "world_size": world,
        "strategy": setting.strategy,
        "comm_s_median": median_of("comm_s"),
        "comm_blocked_s_median": median_of("comm_blocked_s"),
        "comm_predicted_s_median": median_of("comm_predicted_s"),
        "comm_bytes_per_step": median_of("comm_bytes"),
        "resumed_from_step": start_step if state is not None else None,
        "provenance": provenance,
    }
    if is_main:
        write_json_atomic(out_dir / "summary.json", summary)
        rust_writer.wait()  # a write still in flight would land after the deletion
        for name in checkpoint.FILES.values():  # the run is complete: model.pt holds the weights
            (out_dir / name).unlink(missing_ok=True)
        message = (
            f"{run['run_id']}: val {summary['final_val_loss']:.4f} nats/token, "
            f"{summary['final_val_bpb']:.4f} bits/byte (floor {floor_text}, gap "
            f"{summary['gap_bpb'] if floor_bpb is None else round(summary['gap_bpb'], 4)}), "
            f"{tokens_per_s:,.0f} tok/s, wall {summary['wall_s']:.1f}s"
        )
        log.info(message)
    return summary


def _record_dicts(records: list[Any]) -> list[dict[str, Any]]:
    from dataclasses import asdict

    return [{k: v for k, v in asdict(r).items() if k != "_marks"} for r in records]


def _write_comm_report(
    path: Path,
    run: dict[str, Any],
    setting: Any,
    par: Any,
    link: Any,
    rows: list[dict[str, Any]],
    records: list[dict[str, Any]],
) -> None:
    """comm.json: per step, the ledger's measured, blocked (exposed) and predicted communication."""
    steps = [{k: r.get(k) for k in ("step", "step_time_s", "comm_s", *COMM_COLUMNS)} for r in rows]
    known = [s for s in steps if s["comm_bytes"] is not None]

    def total(key: str) -> float | None:
        values = [s[key] for s in known if s[key] is not None]
        return sum(values) if values else None

    write_json_atomic(
        path,
        {
            "run_id": run["run_id"],
            "parallelism": setting.as_dict(),
            "world_size": setting.world_size,
            "link_model": link.as_dict() if link is not None else None,
            "expected_bytes_per_step": par.expected,
            "steps_recorded": len(known),
            "totals": {
                key: total(key)
                for key in ("comm_bytes", "comm_measured_s", "comm_blocked_s", "comm_predicted_s")
            },
            "note": (
                "measured_s: time inside the collectives; blocked_s: time the step waited for "
                "them (exposed, not overlapped); predicted_s: alpha-beta model (cost_model). "
                "FSDP2/DTensor collectives are recorded on the first steps of a process only; "
                "their time is host launch time, not duration (see parallel/ledger.py)."
            ),
            "steps": steps,
            "records": records,
        },
    )


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
    rank = int(os.environ.get("RANK", "0"))  # under torchrun, rank 0 logs progress; others warn
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s %(name)s{f' [rank {rank}]' if rank else ''} %(levelname)s %(message)s",
    )
    try:
        run = parse_run_config(args.run_config)
        train(run, args.train, args.val, args.ground_truth, args.out)
    except (RunConfigError, FileNotFoundError) as e:
        print(f"nanigpt.train: error: {e}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, checkpoint.CheckpointError, ValueError, OutputWriteError) as e:
        print(f"nanigpt.train: error: {e}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
