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

Checkpoints (`nanigpt.training.checkpoint`): every `training.checkpoint_every` steps (default: 10 per run; 0
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

This module is the loop and its CLI; the run config is checked once by `nanigpt.training.config`, and
each part of the loop lives in the `nanigpt.training` module that owns it: the step (shared with
`nanigpt.bench.parallel`), the metrics recorder, the checkpoint policy, the profiler window, the
data, process start-up and the reductions over ranks. The LR schedule is `nanigpt.training.schedule`.

    python -m nanigpt.train --run-config JSON_OR_@PATH --train train.bin --val val.bin \\
        --ground-truth ground_truth.json --out results/runs/RUN_ID
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from nanigpt.io import OutputWriteError, ensure_dir, read_json, write_json_atomic
from nanigpt.measure.hardware import peak_bf16_flops
from nanigpt.measure.provenance import collect_provenance
from nanigpt.measure.timers import StepTimer
from nanigpt.training.checkpoint.policy import CHECKPOINT_STRATEGIES, Checkpointer
from nanigpt.training.checkpoint.torch_format import CheckpointError
from nanigpt.training.config import RunConfig, RunConfigError
from nanigpt.training.data import open_data, read_floor, run_inputs
from nanigpt.training.metrics import (
    INTERCEPT_STEPS,
    MetricsRecorder,
    NonFiniteLossError,
    Progress,
    peak_memory_bytes,
)
from nanigpt.training.processes import start_processes
from nanigpt.training.profiling import open_trace
from nanigpt.training.ranks import mean_over_ranks, save_weights
from nanigpt.training.schedule import lr_at
from nanigpt.training.step import PHASES, evaluate, train_step

log = logging.getLogger("nanigpt.train")

ADAMW_BETAS = (0.9, 0.95)  # as nanoGPT / GPT-3


def parse_run_config(text: str) -> dict[str, Any]:
    """`--run-config` value: a JSON string, or `@path` to a JSON file."""
    if text.startswith("@"):
        return read_json(text[1:], what="run config file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RunConfigError(f"--run-config is not valid JSON ({e}); pass JSON or @path") from e


def run_files(
    run: dict[str, Any], train_path: str | None, val_path: str | None, truth_path: str | None
) -> tuple[str, str, str]:
    """The (train, val, ground truth) files of a run: each as given on the command line, else
    from the run config's `inputs` (a graph spec, `nanigpt.graph.jobs.run_spec`), which is taken
    out of `run`, so the settings left are the trainer's."""
    inputs = (run.pop("inputs", None) if isinstance(run, dict) else None) or {}
    if not isinstance(inputs, dict):
        raise RunConfigError(f"run config: inputs must be a mapping of files, got {inputs!r}")
    given = {"train": train_path, "val": val_path, "ground_truth": truth_path}
    files = {k: v if v is not None else inputs.get(k) for k, v in given.items()}
    missing = [k for k, v in files.items() if v is None]
    if missing:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in missing)
        raise RunConfigError(f"no {flags}: pass it, or name it under the run config's inputs")
    return files["train"], files["val"], files["ground_truth"]


def build_model(run: RunConfig | dict[str, Any]) -> tuple[torch.nn.Module, Any]:
    """The model of a run and its GPTConfig; a bad `model` section is a RunConfigError."""
    from nanigpt.model.config import GPTConfig
    from nanigpt.model.gpt import GPT

    if isinstance(run, RunConfig):
        return GPT(run.model), run.model
    try:
        cfg = GPTConfig.from_dict(run["model"])
    except (ValueError, TypeError) as e:
        raise RunConfigError(f"run config: {e}") from e
    return GPT(cfg), cfg


def count_flops(model_cfg: Any, seq_len: int) -> Any:
    """Parameter and FLOP accounting at the trained context length."""
    from nanigpt.model.flops import count

    return count(model_cfg, seq_len=seq_len)


def _parallelize(model: torch.nn.Module, setting: Any, device: torch.device, world: int):
    """(Parallelized, ledger): the run's strategy applied to the model, and its ledger."""
    from nanigpt.parallel.apply import Parallelized, parallelize
    from nanigpt.parallel.ledger import Ledger
    from nanigpt.parallel.mesh import build_mesh
    from nanigpt.parallel.setting import ParallelSetting

    ledger = Ledger(device)
    if world == 1:
        return Parallelized(model, ParallelSetting(), None, ledger), ledger
    return parallelize(model, setting, build_mesh(setting, device.type), ledger), ledger


def _write_config(out_dir: Path, cfg: RunConfig, provenance: dict, paths: dict, derived: dict):
    """config.json (the resolved run, provenance, inputs, derived values); stale temp files go."""
    ensure_dir(out_dir)
    for stale in out_dir.glob(".*.tmp"):  # temp files of a killed attempt (nanigpt.io)
        stale.unlink(missing_ok=True)
    inputs = {k: str(v) for k, v in paths.items()}
    record = {"run": cfg.as_dict(), "provenance": provenance, "inputs": inputs, "derived": derived}
    write_json_atomic(out_dir / "config.json", record)


@dataclass
class _Run:
    """What the loop works with, built by `_start_run` (the objects of one process's run)."""

    cfg: RunConfig
    out_dir: Path
    setting: Any
    world: int
    is_main: bool
    device: torch.device
    model: torch.nn.Module
    step_model: Any
    par: Any
    optimizer: torch.optim.Optimizer
    ckpt: Checkpointer
    state: dict[str, Any] | None
    data: Any
    recorder: MetricsRecorder
    progress: Progress | None
    trace: Any
    trace_offset: int
    timer: StepTimer
    accounting: Any
    provenance: dict[str, Any]
    floor_bpb: float | None
    wall: Any  # () -> seconds of training so far, over every attempt

    @property
    def start_step(self) -> int:
        return self.state["step"] if self.state is not None else 0


def _start_run(
    cfg: RunConfig,
    paths: dict[str, Path],
    out_dir: Path,
    branch_from: tuple[Path, str] | None,
    keep_checkpoints: dict[int, Path] | None,
    wall_start: float,
) -> _Run:
    """Start the processes, build (or resume) the model, optimizer, data and instruments, and write
    config.json: everything the loop needs, in the order that keeps a run bit-for-bit repeatable."""
    floor_bpb = read_floor(paths["ground_truth"])
    t, steps = cfg.training, cfg.steps
    setting, rank, world, device = start_processes(cfg)
    is_main = rank == 0
    if t.threads:
        torch.set_num_threads(t.threads)
    torch.manual_seed(t.seed)  # every rank builds the same initial weights

    model, model_cfg = build_model(cfg)
    model.to(device)
    accounting = count_flops(model_cfg, t.seq_len)
    flops_per_token = float(accounting.train_flops_per_token)
    on_gpu = device.type == "cuda"
    peak_flops = peak_bf16_flops(torch.cuda.get_device_name(device)) if on_gpu else None
    ckpt = Checkpointer(cfg, out_dir, paths, setting.strategy, is_main, keep_checkpoints)
    state = ckpt.load(branch_from, device, world)
    start_step = state["step"] if state is not None else 0
    if state is not None:
        model.load_state_dict(state["model"])

    par, ledger = _parallelize(model, setting, device, world)
    fused = on_gpu and setting.strategy in CHECKPOINT_STRATEGIES
    optimizer = par.make_optimizer(
        lr=t.lr, weight_decay=t.weight_decay, betas=ADAMW_BETAS, fused=fused or None
    )
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    link = None
    if world > 1:
        from nanigpt.parallel.cost_model import calibrate

        link = calibrate(None, device)  # alpha-beta fit on this world's links
    step_model = torch.compile(par.model) if t.compile else par.model

    provenance = collect_provenance(cfg.as_dict(), device)
    provenance["kernels"] = model_cfg.kernel_impls  # which implementation ran each kernel
    derived = {
        "device": str(device),
        "steps": steps,
        "tokens_per_step": cfg.tokens_per_step,
        "warmup_steps": cfg.warmup_steps,
        "flops_per_token": flops_per_token,
        "peak_flops": peak_flops,
        "world_size": world,
        "strategy": setting.strategy,
        "checkpoint_every": ckpt.every,
        "snapshot_every": cfg.snapshot_every,
        "checkpoint_format": ckpt.format,
    }
    if is_main:
        _write_config(out_dir, cfg, provenance, paths, derived)
    data = open_data(paths, t, state)
    if is_main:
        floor = "unknown" if floor_bpb is None else f"{floor_bpb:.4f}"
        ranks = f" x {world} ranks ({setting.strategy})" if world > 1 else ""
        log.info(
            f"{cfg.run_id}: {steps} steps x {cfg.tokens_per_step} tokens on "
            f"{provenance['device']}{ranks}, {flops_per_token:.3g} FLOPs/token, floor "
            f"{floor} bits/byte"
        )
        if state is not None:
            log.info(
                f"{cfg.run_id}: resuming from {ckpt.resume_path} at step {start_step}/{steps} "
                f"({start_step * cfg.tokens_per_step} tokens trained)"
            )
    timer = StepTimer(device, PHASES)
    progress = Progress(steps, cfg.tokens_per_step, cfg.run_id, start_step) if is_main else None
    rows = state["metrics"] if state is not None else None
    parallel = (par, ledger, link, world)
    recorder = MetricsRecorder(
        cfg.run_id, steps, cfg.tokens_per_step, t.grad_accum, flops_per_token, peak_flops,
        parallel, start_step, rows,
    )  # fmt: skip
    wall_before = float(state["wall_s"]) if state is not None else 0.0
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    trace_path = out_dir / "trace.json.gz"
    metadata = {"run_id": cfg.run_id, "device": provenance["device"]}
    trace, offset = open_trace(trace_path, cfg.profile, device, state, is_main, metadata)
    ledger.step = start_step

    def wall() -> float:
        return wall_before + time.perf_counter() - wall_start

    ckpt.bind(
        model=model, optimizer=optimizer, loader=data.train_loader, rows=recorder.rows,
        trace=trace, trace_path=trace_path, setting=setting, wall=wall,
    )  # fmt: skip
    return _Run(
        cfg, out_dir, setting, world, is_main, device, model, step_model, par, optimizer, ckpt,
        state, data, recorder, progress, trace, offset, timer, accounting, provenance, floor_bpb,
        wall,
    )  # fmt: skip


def train(
    run: RunConfig | dict[str, Any],
    train_path: str | Path,
    val_path: str | Path,
    ground_truth_path: str | Path,
    out_dir: str | Path,
    *,
    branch_from: tuple[Path, str] | None = None,
    keep_checkpoints: dict[int, Path] | None = None,
) -> dict[str, Any]:
    """Train one run; write its outputs (module docstring) from rank 0; return the summary.

    WSD cooldown branches (`nanigpt.graph.jobs`): `branch_from` = (checkpoint, fingerprint) starts the run
    from another run's checkpoint, which must carry that fingerprint (the stable run's), when the
    run has no checkpoint of its own; `keep_checkpoints` = {step: path} also saves the training
    state after those steps (the last included) to files that outlive the run.
    """
    wall_start = time.perf_counter()
    cfg = RunConfig.from_dict(run)  # the one place a run is checked
    paths = run_inputs(train_path, val_path, ground_truth_path)
    r = _start_run(cfg, paths, Path(out_dir), branch_from, keep_checkpoints, wall_start)
    t, steps, recorder, ckpt, trace = cfg.training, cfg.steps, r.recorder, r.ckpt, r.trace
    metrics_path = r.out_dir / "metrics.parquet"
    pending = None  # the last trained step whose metrics are not read yet
    try:
        with trace:
            for step in range(r.start_step, steps):
                lr = lr_at(step, steps, **cfg.lr_schedule)
                for group in r.optimizer.param_groups:
                    group["lr"] = lr
                intercept = r.par.intercepting and step - r.start_step < INTERCEPT_STEPS
                step_out = train_step(
                    r.par, r.step_model, r.optimizer, r.data.train_loader, r.timer, r.device,
                    t.grad_accum, t.grad_clip, intercept=intercept,
                )  # fmt: skip
                profiled = trace.recording(step - r.trace_offset)
                trace.step()
                # Metrics are read one step late (the host queues step N+1 before waiting for N),
                # and at once before eval, snapshots, checkpoints, the last step, and with ranks.
                done = (step, lr, step_out, profiled, peak_memory_bytes(r.device))
                if pending is not None:
                    lagged = recorder.finish_step(*pending)
                    if r.progress is not None:
                        r.progress.update(lagged["step"], lagged["loss"], None)
                pending = done
                is_last = step == steps - 1
                evaluating = is_last or (cfg.eval_every and (step + 1) % cfg.eval_every == 0)
                snapshotting = cfg.snapshot_every and (step + 1) % cfg.snapshot_every == 0
                checkpointing, branch_point = ckpt.due(step, is_last)
                if not (evaluating or snapshotting or checkpointing or branch_point or r.world > 1):
                    continue
                row = recorder.finish_step(*pending)
                pending = None
                if evaluating:
                    val = evaluate(r.step_model, r.data.val_batches, r.device)
                    val_loss = mean_over_ranks(torch.tensor([val]))[0]
                    val_bpb = r.data.bits_per_byte(val_loss)
                    gap = None if r.floor_bpb is None else val_bpb - r.floor_bpb
                    row.update(val_loss=val_loss, val_bpb=val_bpb, val_gap_bpb=gap)
                if r.progress is not None:
                    r.progress.update(step, row["loss"], row["val_bpb"])
                if r.is_main and row["val_loss"] is not None and not is_last:
                    recorder.write(metrics_path)  # progress visible during long runs
                if snapshotting:
                    snapshot = r.out_dir / "snapshots" / f"step_{step + 1:06d}.pt"
                    save_weights(snapshot, r.model, r.par, r.is_main)
                if branch_point is not None:
                    ckpt.save(step + 1, branch_point)
                if checkpointing:
                    ckpt.save(step + 1)
    except NonFiniteLossError:
        if recorder.rows and r.is_main:
            recorder.write(metrics_path)
        raise
    finally:
        ckpt.finish()  # let a write in flight land (the last good checkpoint)
        if r.progress is not None:
            r.progress.close()
    return _finish_run(r, metrics_path)


def _finish_run(r: _Run, metrics_path: Path) -> dict[str, Any]:
    """Write metrics.parquet, model.pt, comm.json and summary.json (last); return the summary."""
    cfg, recorder = r.cfg, r.recorder
    if r.is_main:
        recorder.write(metrics_path)
    save_weights(r.out_dir / "model.pt", r.model, r.par, r.is_main)
    if r.world > 1 and r.is_main:
        recorder.write_comm_report(r.out_dir / "comm.json", cfg.run_id, r.setting)
    summary = recorder.summary(
        cfg,
        r.accounting,
        floor_bpb=r.floor_bpb,
        wall_s=r.wall(),
        device=r.provenance["device"],
        strategy=r.setting.strategy,
        resumed_from_step=r.start_step if r.state is not None else None,
        provenance=r.provenance,
    )
    if r.is_main:
        write_json_atomic(r.out_dir / "summary.json", summary)
        r.ckpt.delete()
        floor = "unknown" if r.floor_bpb is None else f"{r.floor_bpb:.4f}"
        gap = summary["gap_bpb"] if r.floor_bpb is None else round(summary["gap_bpb"], 4)
        log.info(
            f"{cfg.run_id}: val {summary['final_val_loss']:.4f} nats/token, "
            f"{summary['final_val_bpb']:.4f} bits/byte (floor {floor}, gap {gap}), "
            f"{summary['tokens_per_s']:,.0f} tok/s, wall {summary['wall_s']:.1f}s"
        )
    return summary


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--run-config",
        required=True,
        help="run config as JSON, or @path to a JSON file (the graph's spec also names its "
        "input files, under `inputs`)",
    )
    parser.add_argument("--train", help="training token shard (.bin; default: inputs.train)")
    parser.add_argument("--val", help="validation token shard (.bin; default: inputs.val)")
    parser.add_argument("--ground-truth", help="ground_truth.json (default: inputs.ground_truth)")
    parser.add_argument("--out", required=True, help="run folder to write")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))  # under torchrun, rank 0 logs progress; others warn
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s %(name)s{f' [rank {rank}]' if rank else ''} %(levelname)s %(message)s",
    )
    try:
        run = parse_run_config(args.run_config)
        files = run_files(run, args.train, args.val, args.ground_truth)
        train(run, *files, args.out)
    except (RunConfigError, FileNotFoundError) as e:
        print(f"nanigpt.train: error: {e}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, CheckpointError, ValueError, OutputWriteError) as e:
        print(f"nanigpt.train: error: {e}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
