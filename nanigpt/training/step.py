"""One training step and the validation forward: what the trainer and the strategy benchmark run.

Serves project questions 1 and 2: a step is `grad_accum` micro-batches (forward, backward, no
gradient communication until the last), the wait for outstanding gradient collectives (`comm`),
then clipping and the optimizer, each timed by phase (`nanigpt.measure.timers`) without a host
sync. `nanigpt.train` and `nanigpt.bench.parallel` call the same `train_step`, so the benchmark
measures the trainer's step.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import torch

from nanigpt.measure.timers import StepTimer
from nanigpt.model.moe import update_router_biases

PHASES = ("data", "forward", "backward", "comm", "optimizer")  # a step's timed phases


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


class MoEStats:
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
    autocast: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, Any, Callable[[], dict[str, float]], torch.Tensor | None]:
    """One optimizer step over `grad_accum` micro-batches, timed by phase; no host sync.

    `par` is the `nanigpt.parallel.apply.Parallelized` of the run (one process: the "single"
    setting, whose calls do nothing but the gradient clipping). Returns this rank's summed
    micro-batch losses and aux losses (tensors, not yet synchronised), the global gradient norm
    before clipping (a tensor), a function that reads the phase times (waiting for the device),
    and the MoE router statistics (None for a dense model). `intercept`: record library
    collectives in the ledger (`par.forward_context`). `autocast`: None, the trainer's choice
    (`autocast_for`: bf16 on a GPU); a bool, bf16 autocast on or off on any device (the benchmark's
    `--autocast`).
    """
    if autocast is None:
        amp = functools.partial(autocast_for, device)
    else:
        amp = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=autocast)
    timer.start_step()
    loss_sum = torch.zeros((), device=device)
    aux_sum = torch.zeros((), device=device)
    moe = MoEStats(device)
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
                with timer.phase("forward"), amp():
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
