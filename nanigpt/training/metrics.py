"""What a run records: one metrics row per step, the summary, and comm.json (project questions 1, 2).

Serves "where does time go in a training step, and how much of it is communication": the recorder
turns a trained step's device values into its row (loss and aux loss averaged over the ranks, phase
times, counted FLOPs and MFU, the ledger's communication, the router's health) and, at the end,
into the summary (median step time over steps without profiler overhead) and, when distributed,
comm.json (per step predicted vs measured communication). The columns are `METRICS_SCHEMA`'s;
docs/interfaces.md says what each file holds.
"""

from __future__ import annotations

import logging
import math
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from nanigpt.io import atomic_path, write_json_atomic
from nanigpt.measure.hardware import mfu
from nanigpt.training.ranks import mean_over_ranks
from nanigpt.training.step import PHASES

log = logging.getLogger("nanigpt.train")

# FSDP2 and DTensor collectives are recorded by a dispatch mode that costs host time on every op:
# the ledger intercepts them on the first few steps only (their bytes repeat step to step).
INTERCEPT_STEPS = 3
COMM_RECORD_STEPS = 3  # collectives listed one by one in comm.json (the first steps of a process)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


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


def _record_dicts(records: list[Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in asdict(r).items() if k != "_marks"} for r in records]


def write_comm_report(
    path: Path,
    run_id: str,
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
            "run_id": run_id,
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


class MetricsRecorder:
    """The rows of a run (those of a resumed run's earlier steps first) and comm.json's records.

    `par`, `ledger` and `link` are the run's `Parallelized`, `Ledger` and fitted link model (None
    in one process); `start_step` is the first step this process trains.
    """

    def __init__(
        self,
        run_id: str,
        steps: int,
        tokens_per_step: int,
        grad_accum: int,
        flops_per_token: float,
        peak_flops: float | None,
        parallel: tuple[Any, Any, Any, int],
        start_step: int,
        rows: list[dict[str, Any]] | None = None,
    ):
        self.run_id, self.steps, self.start_step = run_id, steps, start_step
        self.tokens_per_step, self.grad_accum = tokens_per_step, grad_accum
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.par, self.ledger, self.link, self.world = parallel
        self.rows: list[dict[str, Any]] = list(rows or [])
        self.records: list[dict[str, Any]] = []  # comm.json's per-collective list (first steps)

    def _comm(self, step: int) -> dict[str, Any]:
        """The ledger's collectives of the step (null in one process or when not recorded)."""
        if self.world == 1:
            return dict.fromkeys(COMM_COLUMNS)
        comm = self.ledger.step_metrics(step, self.link)
        if not self.par.intercepting or step - self.start_step < INTERCEPT_STEPS:
            comm = {k: comm[k] for k in COMM_COLUMNS}
        else:  # library collectives not recorded on this step: unknown, not zero
            comm = dict.fromkeys(COMM_COLUMNS)
        if len(self.records) < 100_000 and step - self.start_step < COMM_RECORD_STEPS:
            self.records.extend(_record_dicts(self.ledger.step_records(step)))
        self.ledger.clear()
        return comm

    def finish_step(self, step: int, lr: float, step_out: tuple, profiled: bool, peak: int) -> dict:
        """The metrics row of a trained step (reads its device values: waits for that step)."""
        loss_sum, aux_sum, grad_norm, read_times, moe = step_out
        times = read_times()
        local = torch.stack([loss_sum.double(), aux_sum.double()]) / self.grad_accum
        if moe is not None:
            local = torch.cat([local, moe])
        reduced = mean_over_ranks(local)
        loss = reduced[0]
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"{self.run_id}: loss is {loss} at step {step} (of {self.steps}, lr {lr:.3g}); "
                f"stopping the run"
            )
        tokens_per_s = self.tokens_per_step / times["step_time_s"]
        comm = self._comm(step)
        row = {
            "step": step,
            "tokens": (step + 1) * self.tokens_per_step,
            "flops": (step + 1) * self.tokens_per_step * self.flops_per_token,
            "loss": loss,
            "aux_loss": reduced[1],
            "lr": lr,
            "grad_norm": float(grad_norm),
            **times,
            "tokens_per_s": tokens_per_s,
            "mfu": mfu(self.flops_per_token, tokens_per_s, self.peak_flops),
            "peak_memory_bytes": peak,
            "profiled": profiled,
            "val_loss": None,
            "val_bpb": None,
            "val_gap_bpb": None,
            **comm,
            **dict(zip(MOE_COLUMNS, reduced[2:] or [None] * 3, strict=True)),
        }
        self.rows.append(row)
        return row

    def write(self, path: Path) -> None:
        write_metrics(path, self.rows)

    def summary(self, cfg: Any, accounting: Any, **fields: Any) -> dict[str, Any]:
        """summary.json: the run's names, counts, final validation, throughput and communication.

        `fields`: floor_bpb, wall_s, device, strategy, resumed_from_step, provenance."""
        rows, tokens_per_step, flops_per_token = (
            self.rows,
            self.tokens_per_step,
            self.flops_per_token,
        )
        # Steady-state throughput: median step time over steps without profiler overhead, after
        # the first (allocator warm-up, compilation). Falls back to all steps for very short runs.
        steady_rows = [r for r in rows[1:] if not r["profiled"]] or rows
        step_time_median = statistics.median(r["step_time_s"] for r in steady_rows)
        tokens_per_s = tokens_per_step / step_time_median
        tokens_trained = self.steps * tokens_per_step
        final = rows[-1]
        params = accounting.params

        def median_of(key: str) -> float | None:
            values = [r[key] for r in steady_rows if r.get(key) is not None]
            return statistics.median(values) if values else None

        return {
            "run_id": cfg.run_id,
            "dataset": cfg.dataset,
            "arch": cfg.arch,
            "arch_kind": cfg.arch_kind,
            "size": cfg.size,
            "parallelism_name": cfg.parallelism_name,
            "seed": cfg.training.seed,  # the run's training seed (a sweep's `seeds` vary it)
            "tokens_target": cfg.tokens,
            "tokens_trained": tokens_trained,
            "steps": self.steps,
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
            "floor_bpb": fields["floor_bpb"],
            "gap_bpb": final["val_gap_bpb"],
            "wall_s": fields["wall_s"],
            "tokens_per_s": tokens_per_s,
            "mfu": mfu(flops_per_token, tokens_per_s, self.peak_flops),
            "device": fields["device"],
            "step_time_s_median": step_time_median,
            "peak_memory_bytes": max(r["peak_memory_bytes"] for r in rows),
            "world_size": self.world,
            "strategy": fields["strategy"],
            "comm_s_median": median_of("comm_s"),
            "comm_blocked_s_median": median_of("comm_blocked_s"),
            "comm_predicted_s_median": median_of("comm_predicted_s"),
            "comm_bytes_per_step": median_of("comm_bytes"),
            "resumed_from_step": fields["resumed_from_step"],
            "provenance": fields["provenance"],
        }

    def write_comm_report(self, path: Path, run_id: str, setting: Any) -> None:
        write_comm_report(path, run_id, setting, self.par, self.link, self.rows, self.records)
