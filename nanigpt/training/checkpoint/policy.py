"""When a run saves and resumes its training state, and in which format: the checkpoint policy.

Serves the contract that a killed run resumes where it stopped, bit for bit on the CPU
(docs/interfaces.md, "A run"), and WSD's one stable run per family (`nanigpt.training.jobs`, Hägele et al.
2024): every `checkpoint_every` steps the run saves its state in its format (`torch`, synchronous;
`rust`, written on a Rust thread while training goes on: `rust_format.Writer`), and at
the steps a WSD family branches from, a branch point in the torch format. A checkpoint with the
run's fingerprint resumes it; one with another is ignored with a warning; a corrupt one stops the
run (`torch_format.CheckpointError`). Only the replicated strategies checkpoint (rank 0 holds
the whole state); under sharded ones checkpointing is off, with the reason logged.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from nanigpt.training.checkpoint import state as run_state
from nanigpt.training.checkpoint import torch_format
from nanigpt.training.checkpoint.torch_format import CheckpointError
from nanigpt.training.config import RunConfig

log = logging.getLogger("nanigpt.train")

# Strategies whose full training state sits on rank 0 (replicated weights and optimizer state).
CHECKPOINT_STRATEGIES = ("single", "ddp_builtin", "ddp_manual")
# The file of each `training.checkpoint_format`.
FILES = {"torch": "checkpoint.pt", "rust": "checkpoint.safetensors"}


def latest(out_dir: str | os.PathLike) -> Path | None:
    """The most recently written checkpoint of a run folder, of either format; None if none."""
    found = [p for p in (Path(out_dir) / name for name in FILES.values()) if p.exists()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read and verify a checkpoint of either format, by its suffix (`torch_format.load`, or
    `rust_format.load` for `.safetensors`: xxh3-128 verified in Rust)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from nanigpt.training.checkpoint import rust_format  # the Rust extension: only when asked

        return rust_format.load(path)
    return torch_format.load(path)


def branch_state(path: Path, fingerprint: str) -> dict[str, Any]:
    """The stable run's checkpoint a cooldown branch starts from (checked: its fingerprint)."""
    state = load(path)  # CheckpointError on a missing, foreign or corrupt file
    if state["fingerprint"] != fingerprint:
        raise CheckpointError(
            f"{path}: written by other stable-run settings or inputs (fingerprint "
            f"{state['fingerprint'][:12]} != {fingerprint[:12]}); rerun the stable run"
        )
    return state


class Checkpointer:
    """A run's checkpoint files, its resume, and the steps after which it saves.

    `keep` = {step: path}: WSD branch points, saved after those steps to files that outlive the
    run. `bind` hands it the state to save once the loop's objects exist.
    """

    def __init__(
        self,
        cfg: RunConfig,
        out_dir: Path,
        inputs: dict[str, Path],
        strategy: str,
        is_main: bool,
        keep: dict[int, Path] | None = None,
    ):
        self.cfg, self.is_main, self.keep = cfg, is_main, keep or {}
        self.format = cfg.training.checkpoint_format
        self.path = out_dir / FILES[self.format]
        self.out_dir = out_dir
        self.resume_path = latest(out_dir) or self.path
        self.fingerprint = run_state.run_fingerprint(cfg.as_dict(), inputs)
        self.enabled = strategy in CHECKPOINT_STRATEGIES
        self.every = cfg.checkpoint_every if self.enabled else 0
        self.writer: Any = None
        if not self.enabled and is_main:
            message = (
                f"{cfg.run_id}: checkpointing is off under strategy {strategy!r}: its "
                f"weights or optimizer state are sharded over the ranks, and only the replicated "
                f"strategies {list(CHECKPOINT_STRATEGIES)} save from rank 0; a killed run restarts"
            )
            log.warning(message)

    def load(self, branch_from: tuple[Path, str] | None, device: torch.device, world: int):
        """The state to resume from: this run's checkpoint, else the branch's; None: from step 0."""
        state = None
        if self.enabled and self.resume_path.exists():
            state = load(self.resume_path)  # CheckpointError: never silently restart
            if state["fingerprint"] != self.fingerprint:
                if self.is_main:
                    message = (
                        f"{self.cfg.run_id}: ignoring {self.resume_path}: it was written for "
                        f"other run settings or inputs (fingerprint {state['fingerprint'][:12]} "
                        f"!= {self.fingerprint[:12]}); starting from step 0"
                    )
                    log.warning(message)
                state = None
        if state is None and branch_from is not None:
            state = branch_state(*branch_from)
        start_step = state["step"] if state is not None else 0
        if world > 1:  # every rank read the same file; make sure they agree before training
            agree = torch.tensor([start_step, -start_step], dtype=torch.int64, device=device)
            dist.all_reduce(agree, op=dist.ReduceOp.MAX)
            if agree[0] != -agree[1]:
                raise CheckpointError(
                    f"{self.resume_path}: ranks disagree on the step to resume from "
                    f"({-int(agree[1])}..{int(agree[0])})"
                )
        return state

    def bind(self, **state: Any) -> None:
        """model, optimizer, loader, rows, trace, trace_path, setting, wall (seconds so far)."""
        from nanigpt.training.checkpoint.rust_format import Writer

        self.state = state
        self.writer = Writer()

    def due(self, step: int, is_last: bool) -> tuple[bool, Path | None]:
        """(periodic checkpoint, WSD branch point) after `step`, on rank 0."""
        periodic = bool(
            self.every and self.is_main and (step + 1) % self.every == 0 and not is_last
        )
        branch = self.keep.get(step + 1) if self.is_main else None
        return periodic, branch

    def save(self, steps_done: int, branch_point: Path | None = None) -> None:
        """The periodic checkpoint in the run's format, or (`branch_point`) a WSD branch point:
        always the synchronous torch format, since a cooldown reads it next in this process."""
        s, cfg = self.state, self.cfg
        trace, trace_path = s["trace"], s["trace_path"]
        trace_bytes = None
        if getattr(trace, "written", False) and trace_path.exists():
            trace_bytes = torch.frombuffer(bytearray(trace_path.read_bytes()), dtype=torch.uint8)
        payload = {
            "fingerprint": self.fingerprint,
            "run_id": cfg.run_id,
            "step": steps_done,
            "steps": cfg.steps,
            "tokens": steps_done * cfg.tokens_per_step,
            "model": s["model"].state_dict(),
            "optimizer": s["optimizer"].state_dict(),
            "scheduler": {
                "step": steps_done,
                "steps": cfg.steps,
                "warmup_steps": cfg.warmup_steps,
                "schedule": cfg.training.schedule,
                "decay_frac": cfg.training.decay_frac,
            },
            "rng": run_state.rng_state(),
            "loader": run_state.loader_state(s["loader"], steps_done * cfg.training.grad_accum),
            "metrics": s["rows"],
            "wall_s": s["wall"](),
            "trace": trace_bytes,
            "parallelism": s["setting"].as_dict(),
        }
        if branch_point is not None or self.format == "torch":
            size = torch_format.save(branch_point or self.path, payload)
            message = f"{cfg.run_id}: checkpoint at step {steps_done} ({size / 1e6:.1f} MB)"
        else:  # the loop waits for the snapshot only; the write's error surfaces at the next wait
            started = time.perf_counter()
            self.writer.save(self.path, payload)
            message = (
                f"{cfg.run_id}: checkpoint at step {steps_done} started (snapshot "
                f"{time.perf_counter() - started:.3f}s; written in the background)"
            )
        log.info(message)

    def finish(self) -> None:
        """Let a write in flight land (the last good checkpoint)."""
        if self.writer is not None:
            self.writer.finish()

    def delete(self) -> None:
        """The run is complete: model.pt holds the weights; its checkpoints go."""
        if self.writer is not None:
            self.writer.wait()  # a write still in flight would land after the deletion
        for name in FILES.values():
            (self.out_dir / name).unlink(missing_ok=True)
