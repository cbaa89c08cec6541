"""The parallelism setting of a run and the device mesh every strategy is built on.

Serves core question 2: one setting `{"dp", "fsdp", "tp", "ep", "strategy"}` names how the world is
cut. Mesh dimensions, outermost first: dp (replicated data parallel), fsdp (sharded data parallel),
ep (expert parallel; its ranks see different data, like data parallel ranks, and share the
non-expert weights), tp (tensor parallel, innermost so its frequent activation collectives stay on
the fastest links). A rank's data shard is its coordinate on the flattened (dp, fsdp, ep) dims;
tensor-parallel ranks see the same data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from nanigpt.launch import world_size

DIMS = ("dp", "fsdp", "ep", "tp")

# strategy -> (dims it may use beyond 1, what it is)
STRATEGIES: dict[str, tuple[tuple[str, ...], str]] = {
    "single": ((), "one process, no collectives"),
    "ddp_builtin": (("dp",), "torch DistributedDataParallel"),
    "ddp_manual": (("dp",), "hand-written bucketed DDP, all-reduce fired from backward hooks"),
    "zero1": (("fsdp",), "hand-written ZeRO-1: optimizer state sharded"),
    "zero2": (("fsdp",), "hand-written ZeRO-2: optimizer state and gradients sharded"),
    "fsdp2": (("fsdp",), "torch FSDP2 fully_shard (ZeRO-3)"),
    "tp_manual": (("tp",), "hand-written Megatron tensor parallel"),
    "tp_dtensor": (("tp",), "DTensor parallelize_module tensor parallel"),
    "ep": (("dp", "ep"), "expert parallel (all_to_all dispatch); non-expert weights DDP"),
    "fsdp2_tp": (("fsdp", "tp"), "FSDP2 x DTensor TP on a 2-D mesh"),
    "fsdp2_ep": (("fsdp", "ep"), "FSDP2 x expert parallel on a 2-D mesh"),
}


@dataclass(frozen=True)
class ParallelSetting:
    dp: int = 1
    fsdp: int = 1
    tp: int = 1
    ep: int = 1
    strategy: str = "single"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ParallelSetting:
        """From a run's `parallelism` dict; a missing `strategy` gets `default_strategy`."""
        known = set(DIMS) | {"strategy"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"parallelism: unknown key(s) {unknown}; expected keys among {sorted(known)}"
            )
        sizes = {}
        for key in DIMS:
            value = d.get(key, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"parallelism.{key}={value!r}: expected an integer >= 1")
            sizes[key] = value
        strategy = d.get("strategy") or default_strategy(**sizes)
        if strategy not in STRATEGIES:
            raise ValueError(
                f"parallelism.strategy={strategy!r}: expected one of {sorted(STRATEGIES)}"
            )
        return cls(**sizes, strategy=strategy)

    @property
    def world_size(self) -> int:
        return world_size(self.as_dict())

    @property
    def data_parallel_size(self) -> int:
        """How many different data shards one global batch is split into."""
        return self.dp * self.fsdp * self.ep

    def as_dict(self) -> dict[str, Any]:
        return {
            "dp": self.dp,
            "fsdp": self.fsdp,
            "tp": self.tp,
            "ep": self.ep,
            "strategy": self.strategy,
        }


def default_strategy(dp: int = 1, fsdp: int = 1, tp: int = 1, ep: int = 1) -> str:
    """The strategy a setting without a `strategy` key gets: PyTorch's built-in where there is one."""
    if tp > 1:
        return "fsdp2_tp" if fsdp > 1 else "tp_dtensor"
    if ep > 1:
        return "fsdp2_ep" if fsdp > 1 else "ep"
    if fsdp > 1:
        return "fsdp2"
    if dp > 1:
        return "ddp_builtin"
    return "single"


def build_mesh(setting: ParallelSetting, device_type: str):
    """A DeviceMesh with dims (dp, fsdp, ep, tp) over the initialised world (None when world is 1)."""
    from torch.distributed.device_mesh import init_device_mesh

    if setting.world_size == 1:
        return None
    world = dist.get_world_size()
    if world != setting.world_size:
        raise ValueError(
            f"parallelism {setting.as_dict()}: dp*fsdp*ep*tp = {setting.world_size} but the "
            f"process group has {world} ranks; launch with --nproc-per-node {setting.world_size}"
        )
    shape = tuple(getattr(setting, d) for d in DIMS)
    return init_device_mesh(device_type, shape, mesh_dim_names=DIMS)


def data_rank(mesh) -> int:
    """This rank's data shard index on the flattened (dp, fsdp, ep) dims (0 without a mesh)."""
    if mesh is None:
        return 0
    c = mesh.get_coordinate()
    sizes = dict(zip(DIMS, mesh.mesh.shape, strict=True))
    coord = dict(zip(DIMS, c, strict=True))
    return (coord["dp"] * sizes["fsdp"] + coord["fsdp"]) * sizes["ep"] + coord["ep"]


def init_distributed() -> tuple[int, int, torch.device]:
    """Initialise the default process group from torchrun's variables: nccl on GPU, gloo on CPU.

    Returns (rank, world_size, device). Without torchrun's variables: (0, 1, device), no group.
    """
    use_cuda = torch.cuda.is_available() and os.environ.get("NANIGPT_DEVICE", "auto") != "cpu"
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1, torch.device("cuda" if use_cuda else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        kwargs = {"device_id": device} if use_cuda else {}
        dist.init_process_group(backend=backend, **kwargs)
    return dist.get_rank(), dist.get_world_size(), device
