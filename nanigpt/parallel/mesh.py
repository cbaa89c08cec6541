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

import torch
import torch.distributed as dist

from nanigpt.parallel.setting import DIMS, ParallelSetting


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
