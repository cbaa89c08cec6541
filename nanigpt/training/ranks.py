"""Reductions and gathers over a run's ranks, outside the training step's communication.

Serves core question 2: metrics are averaged over the ranks (logging is not training
communication, so it bypasses the ledger) and the weights written to model.pt and snapshots are
gathered whole from however the strategy sharded them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from nanigpt.io import atomic_path


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


def full_state_dict(model: torch.nn.Module, par: Any) -> dict[str, torch.Tensor]:
    """The unwrapped model's full state_dict on the CPU, gathered from every rank if sharded.

    Collective under a sharded strategy: every rank must call it. DTensor weights (FSDP2, DTensor
    TP) are gathered with `full_tensor`; hand-sharded ones (manual TP, EP) with an all_gather over
    their mesh dim, concatenated along the tensor dim they were sliced on (both from
    `par.sharded_dims`, the one record of what is sliced where).
    """
    from torch.distributed.tensor import DTensor

    out = {}
    for name, value in model.state_dict().items():
        t = value.detach()
        if isinstance(t, DTensor):
            t = t.full_tensor()
        for dim, axis in par.sharded_dims.get(name, {}).items():
            group = par.mesh[dim].get_group()
            parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
            dist.all_gather(parts, t.contiguous(), group=group)
            t = torch.cat(parts, dim=axis)
        out[name] = t.cpu().clone()
    return out


def save_weights(path: Path, model: torch.nn.Module, par: Any, is_main: bool) -> None:
    """`torch.save(state_dict)` of the full unwrapped model, atomically, by rank 0."""
    state = full_state_dict(model, par)
    if is_main:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
