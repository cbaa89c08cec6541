"""ZeRO-3 through PyTorch's FSDP2 (`fully_shard`): parameters, gradients and optimizer state sharded.

Serves core question 2: with every block its own FSDP unit, each step all-gathers every block's
parameters before its forward, again before its backward (reshard_after_forward=True frees them in
between), and reduce-scatters its gradients after its backward: 3 x (n-1)/n of the parameter bytes
per rank, against DDP's 2 x (n-1)/n, in exchange for 1/n of the memory (Zhao et al. 2023, PyTorch
FSDP). The root unit (embeddings, final norm, head) is not resharded after forward (FSDP2's
default for the root), so its parameters are gathered once. FSDP2 issues the collectives itself:
`Ledger.intercept` records their bytes, `expected_bytes` predicts them.

Compositions: on a 2-D mesh the same call takes the fsdp dim of a TP'd model (DTensor TP already
applied), or, with expert parallelism, shards the experts over `fsdp` and everything else over the
flattened (fsdp, ep) dims (torchtitan's layout): the router and the shared expert become their own
units so that the MoE unit holds only the experts.
"""

from __future__ import annotations

import torch.nn as nn


def apply_fsdp2(
    model: nn.Module, mesh, expert_mesh=None, reshard_after_forward: bool = True
) -> None:
    """fully_shard every block, then the root. `expert_mesh`: shard MoE experts on it instead."""
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        if expert_mesh is not None and block.is_moe:
            moe = block.mlp
            fully_shard(moe.router, mesh=mesh, reshard_after_forward=reshard_after_forward)
            if moe.shared is not None:
                fully_shard(moe.shared, mesh=mesh, reshard_after_forward=reshard_after_forward)
            fully_shard(moe, mesh=expert_mesh, reshard_after_forward=reshard_after_forward)
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh)


def _padded_bytes(params, n: int) -> int:
    """FSDP2 shards dim 0 with padding to a multiple of n rows."""
    total = 0
    for p in params:
        rows = p.shape[0] if p.dim() else 1
        per_row = p.numel() // rows if rows else 0
        total += -(-rows // n) * n * per_row * p.element_size()
    return total


def expected_bytes(model_before_sharding: nn.Module, n: int) -> dict[str, int]:
    """Per step for plain FSDP2 on n ranks (no grad accumulation): all_gather and reduce_scatter payloads.

    Blocks: gathered forward and backward; root (everything outside the blocks): gathered once.
    Every unit's gradients are reduce-scattered once.
    """
    block_params = [p for b in model_before_sharding.blocks for p in b.parameters()]
    ids = {id(p) for p in block_params}
    root_params = [p for p in model_before_sharding.parameters() if id(p) not in ids]
    blocks, root = _padded_bytes(block_params, n), _padded_bytes(root_params, n)
    return {"all_gather": 2 * blocks + root, "reduce_scatter": blocks + root}


def unsharded_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())
