"""Benchmark every parallelism strategy: step time, exposed communication, predicted vs measured.

Serves core question 2 (what each strategy's communication costs, and how much of it is hidden).
Under `torchrun --nproc-per-node N` (gloo on the CPU, NCCL on GPUs) it runs each strategy that fits
N ranks on a dense and an MoE model for a few steps and writes one JSON with, per (arch, strategy):
- `step_time_s`: median over the timed steps;
- `compute_only_s`: the same rank's share of the work with no communication (the unsharded model on
  this rank's rows, divided by tp), and `exposed_comm_s` = step time - compute only: the
  communication (and sharding overhead) the strategy fails to hide;
- the ledger of one extra recorded step (device syncs around every collective, library collectives
  intercepted): bytes per op, `measured_comm_s` beside the alpha-beta `predicted_comm_s`, with
  alpha and beta calibrated on the world group first;
- `tokens_per_s` and `mfu` (counted FLOPs / (step time x peak x ranks); null on the CPU);
- `losses` of every step, and the single-process reference trajectory for the same data.

The same functions (`run_case`, `reference_losses`, `make_batches`) drive the tests' equivalence
checks (tests/distributed/strategies.py).

    torchrun --standalone --nproc-per-node 2 -m nanigpt.bench.parallel --out results/parallel/bench.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from typing import Any

import torch
import torch.distributed as dist

from nanigpt.measure.timers import StepTimer
from nanigpt.parallel.cost_model import DEFAULTS, calibrate
from nanigpt.parallel.ledger import Ledger
from nanigpt.parallel.mesh import build_mesh, init_distributed
from nanigpt.parallel.setting import ParallelSetting
from nanigpt.training.step import PHASES, train_step

log = logging.getLogger("nanigpt.bench.parallel")

DENSE = {
    "vocab_size": 64,
    "seq_len": 16,
    "n_layer": 2,
    "d_model": 32,
    "n_head": 4,
    "mlp_ratio": 2.0,
    "tied_embeddings": False,
}
MOE = {
    **DENSE,
    "moe": {"num_experts": 4, "top_k": 2, "capacity_factor": None, "every": 2},
}
# A size where communication and compute are both visible on 2 H100s (about 150M parameters).
GPU_DENSE = {
    "vocab_size": 32768, "seq_len": 1024, "n_layer": 8, "d_model": 1024, "n_head": 16,
    "mlp_ratio": 8 / 3, "tied_embeddings": False,
}  # fmt: skip
GPU_MOE = {"num_experts": 8, "top_k": 2, "capacity_factor": None, "every": 2}
PRESETS = {"tiny": (DENSE, MOE["moe"], 8), "gpu": (GPU_DENSE, GPU_MOE, 16)}
OPTIM = {"lr": 1e-2, "weight_decay": 0.1, "grad_clip": 0.5}  # the tiny models start near 0.72
PRESET_OPTIM = {"tiny": OPTIM, "gpu": {**OPTIM, "lr": 3e-4, "grad_clip": 1.0}}  # 150M: a sane lr


def settings_for(world: int, arch_kind: str) -> list[dict[str, Any]]:
    """Every strategy that runs on `world` ranks for this kind of model."""
    out = []
    if world == 1:
        return [{"strategy": "single"}]
    for name in ("ddp_builtin", "ddp_manual"):
        out.append({"dp": world, "strategy": name})
    for name in ("zero1", "zero2", "fsdp2"):
        out.append({"fsdp": world, "strategy": name})
    for name in ("tp_manual", "tp_dtensor"):
        out.append({"tp": world, "strategy": name})
    if arch_kind == "moe":
        out.append({"ep": world, "strategy": "ep"})
    if world % 2 == 0 and world >= 4:
        out.append({"fsdp": world // 2, "tp": 2, "strategy": "fsdp2_tp"})
        if arch_kind == "moe":
            out.append({"fsdp": world // 2, "ep": 2, "strategy": "fsdp2_ep"})
    return out


def make_batches(
    model_cfg: dict, batch: int, steps: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    T, V = model_cfg["seq_len"], model_cfg["vocab_size"]
    out = []
    for _ in range(steps):
        seq = torch.randint(0, V, (batch, T + 1), generator=g)
        out.append((seq[:, :-1].contiguous(), seq[:, 1:].contiguous()))
    return out


def build_model(model_cfg: dict, device, seed: int = 0):
    from nanigpt.model.config import GPTConfig
    from nanigpt.model.gpt import GPT

    torch.manual_seed(seed)
    model = GPT(GPTConfig.from_dict(model_cfg)).to(device)
    model.set_moe_impl("loop" if device.type == "cpu" else "auto")
    return model


def reference_losses(model_cfg: dict, batches, data_world: int, device, optim=OPTIM):
    """Single process, the global batch as `data_world` micro-batches (what the ranks see).

    Returns (losses, gradient norms before clipping) per step."""
    from nanigpt.parallel.apply import Parallelized

    model = build_model(model_cfg, device)
    par = Parallelized(model, ParallelSetting(), None, Ledger(device))
    opt = par.make_optimizer(lr=optim["lr"], weight_decay=optim["weight_decay"])
    losses, norms = [], []
    for x, y in batches:
        rows = x.shape[0] // data_world
        total = 0.0
        for r in range(data_world):
            sl = slice(r * rows, (r + 1) * rows)
            out = model(x[sl].to(device), y[sl].to(device))
            ((out.loss + out.aux_loss) / data_world).backward()
            total += float(out.loss.detach()) / data_world
        norms.append(float(par.clip_grad_norm_(optim["grad_clip"])))
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
    return losses, norms


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _MicroBatches:
    """One step's global batch `x, y` as `accum` micro-batches, in the loader interface
    `train_step` draws from (`next_batch`): micro-batch m holds the m-th `1/accum` of every data
    rank's rows, so `par.local_batch` gives each rank the m-th slice of its own contiguous rows."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, data_world: int, accum: int):
        rows = x.shape[0] // data_world
        micro = rows // accum

        def part(m: int) -> torch.Tensor:
            starts = [r * rows + m * micro for r in range(data_world)]
            return torch.cat([torch.arange(s, s + micro) for s in starts])

        self.batches = [(x[part(m)], y[part(m)]) for m in range(accum)]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batches.pop(0)


def run_case(
    setting: dict,
    model_cfg: dict,
    batches,
    device,
    record_step: int | None = 0,
    bucket_bytes: int | None = None,
    optim=OPTIM,
    accum: int = 1,
    autocast: bool = False,
    blocked_step: int | None = None,
) -> dict[str, Any]:
    """Train `len(batches)` steps under `setting`; the step `record_step` is recorded in the ledger
    with device syncs and interception (its time is not in `step_times`). `accum` > 1 splits each
    rank's rows into that many micro-batches, all but the last under `no_sync()`. The step
    `blocked_step` is recorded without syncs or interception: the wrapped collectives' `blocked_s`
    there is the time the step really waited for communication (exposed, not overlapped)."""
    from nanigpt.parallel.apply import parallelize

    s = ParallelSetting.from_dict(setting)
    mesh = build_mesh(s, device.type)
    model = build_model(model_cfg, device)
    ledger = Ledger(device)
    par = parallelize(model, s, mesh, ledger, bucket_bytes=bucket_bytes)
    opt = par.make_optimizer(lr=optim["lr"], weight_decay=optim["weight_decay"])
    timer = StepTimer(device, PHASES)
    losses, norms, step_times = [], [], []
    for step, (x, y) in enumerate(batches):
        recording = step == record_step
        ledger.enabled = recording or step == blocked_step
        ledger.clock.sync = recording
        micro_batches = _MicroBatches(x, y, par.data_world, accum)
        if dist.is_initialized():
            dist.barrier()
        _sync(device)
        start = time.perf_counter()
        # the trainer's step (nanigpt.training.step): micro-batches, no_sync, grad sync, clip, AdamW
        loss_sum, _, grad_norm, _, _ = train_step(
            par,
            par.model,
            opt,
            micro_batches,
            timer,
            device,
            accum,
            optim["grad_clip"],
            intercept=recording,
            autocast=autocast,
        )
        norms.append(float(grad_norm))
        _sync(device)
        elapsed = time.perf_counter() - start
        ledger_step = ledger.enabled
        ledger.enabled = True
        losses.append(par.mean_over_data(loss_sum / accum))
        if not ledger_step:
            step_times.append(elapsed)
    # the metric all_reduce above ran with the ledger enabled: keep the recorded steps' records only
    keep = (record_step, blocked_step)
    ledger.records = [r for r in ledger.records if r.step in keep and r.purpose != "metric"]
    return {
        "setting": s.as_dict(),
        "losses": losses,
        "grad_norms": norms,
        "step_times": step_times,
        "ledger": ledger,
        "expected": par.expected,
        "par": par,
    }


def compute_only_time(
    model_cfg: dict, batches, data_world: int, tp: int, device, autocast: bool = False
) -> float:
    """Median step time of the unsharded model on one rank's rows, no communication, / tp.

    Runs under the same bf16 autocast as the strategies, so the difference is communication."""
    model = build_model(model_cfg, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times = []
    for x, y in batches:
        rows = x.shape[0] // data_world
        xl, yl = x[:rows].to(device), y[:rows].to(device)
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(xl, yl)
        (out.loss + out.aux_loss).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:] or times) / tp


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--steps", type=int, default=6,
        help="steps per strategy: first warm-up, last two recorded (blocked time, then ledger)",
    )  # fmt: skip
    ap.add_argument(
        "--preset", choices=sorted(PRESETS), default="tiny", help="model sizes and batch"
    )
    ap.add_argument("--batch", type=int, default=None, help="global batch (sequences)")
    ap.add_argument("--chart-from", default=None, help="only draw --out (SVG) from this bench JSON")
    ap.add_argument("--model-json", default=None, help="dense model dict (MoE adds 'moe')")
    ap.add_argument("--moe-json", default=None, help="the moe sub-dict for the MoE model")
    ap.add_argument(
        "--strategies", default="", help="comma-separated subset (default: all that fit)"
    )
    ap.add_argument("--archs", default="dense,moe")
    ap.add_argument("--autocast", action="store_true", help="bf16 autocast (GPU runs)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.chart_from:
        from nanigpt.plots import save_from_cli
        from nanigpt.plots.parallel_bench import bench_chart

        code = save_from_cli(lambda: bench_chart(args.chart_from), args.out)
        if code:
            raise SystemExit(code)
        return
    preset_dense, preset_moe, preset_batch = PRESETS[args.preset]
    args.batch = args.batch or preset_batch

    rank, world, device = init_distributed()
    dense = json.loads(args.model_json) if args.model_json else dict(preset_dense)
    moe = {**dense, "moe": json.loads(args.moe_json) if args.moe_json else dict(preset_moe)}
    autocast = args.autocast
    link = calibrate(device=device) if world > 1 else DEFAULTS[device.type]
    wanted = [s for s in args.strategies.split(",") if s]
    from nanigpt.measure.hardware import peak_bf16_flops
    from nanigpt.model.flops import count

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_bf16_flops(device_name)
    results = []
    for arch in args.archs.split(","):
        cfg = dense if arch == "dense" else moe
        batches = make_batches(cfg, args.batch, args.steps)
        flops_per_token = count(cfg).train_flops_per_token
        for setting in settings_for(world, arch):
            if wanted and setting["strategy"] not in wanted:
                continue
            s = ParallelSetting.from_dict(setting)
            t0 = time.perf_counter()
            try:
                res = run_case(
                    setting, cfg, batches, device, record_step=args.steps - 1,
                    blocked_step=args.steps - 2, autocast=autocast,
                    optim=PRESET_OPTIM[args.preset],
                )  # fmt: skip
            except Exception as e:  # same on every rank (a refusal, OOM): record it, go on
                log.exception(f"{arch} {s.strategy} failed")
                results.append({"arch": arch, "strategy": s.strategy, "error": repr(e)[:500]})
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            step_time = statistics.median(res["step_times"][1:] or res["step_times"])
            compute = compute_only_time(
                cfg, batches, s.data_parallel_size, s.tp, device, autocast=autocast
            )
            summary = res["ledger"].step_summaries(link)
            recorded = summary[args.steps - 1]
            tokens_per_s = args.batch * cfg["seq_len"] / step_time
            mfu = None if peak is None else flops_per_token * tokens_per_s / (peak * world)
            row = {
                "arch": arch,
                "strategy": s.strategy,
                "setting": s.as_dict(),
                "world_size": world,
                "device": device_name,
                "step_time_s": step_time,
                "compute_only_s": compute,
                "exposed_comm_s": max(0.0, step_time - compute),
                "tokens_per_s": tokens_per_s,
                "mfu": mfu,
                "comm_bytes": recorded.get("bytes"),
                "comm_wire_bytes": recorded.get("wire_bytes"),
                "collectives": recorded.get("collectives"),
                "measured_comm_s": recorded.get("measured_s"),
                "blocked_comm_s": summary[args.steps - 2].get("blocked_s"),
                "measured_count": recorded.get("measured_count"),
                "predicted_measured_comm_s": recorded.get("predicted_measured_s"),
                "predicted_comm_s": recorded.get("predicted_s"),
                "by_op": recorded.get("by_op"),
                "expected_bytes": res["expected"],
                "losses": res["losses"],
                "wall_s": time.perf_counter() - t0,
            }
            results.append(row)
            if rank == 0:
                log.info(
                    f"{arch} {s.strategy}: step {step_time * 1e3:.2f} ms, compute {compute * 1e3:.2f} ms, "
                    f"comm bytes {row['comm_bytes']}, measured {row['measured_comm_s']}, "
                    f"predicted {row['predicted_comm_s']}"
                )
                # rewritten after every case, so a run cut short keeps what it measured
                _write_results(args.out, link, world, results)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _write_results(path: str, link, world: int, results: list[dict[str, Any]]) -> None:
    from nanigpt.io import write_json_atomic

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json_atomic(path, {"link_model": link.as_dict(), "world_size": world, "results": results})


if __name__ == "__main__":
    main()
