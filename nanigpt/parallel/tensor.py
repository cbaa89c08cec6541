"""Tensor parallelism (Megatron-LM, Shoeybi et al. 2019): hand-written, and through DTensor.

Serves core question 2: TP splits each block's matrices over the `tp` group and pays with
activation collectives inside every layer. Attention: wq, wk, wv are split by columns (whole heads
per rank), wo by rows; MLP: w_gate, w_up by columns, w_down by rows. Each parallel region starts
with `f` (identity forward, all_reduce of the input gradient backward) and ends with `g` (all_reduce
of the partial outputs forward, identity backward), Megatron section 3 figure 3. Per dense layer and
step that is 2 all_reduces forward and 2 backward of batch*seq*d_model activations; embeddings,
norms, the head and MoE layers stay replicated (their gradients come out equal on every tp rank,
because the inputs and the output gradients they see are already reduced).

One plan, `tp_regions`, says which modules are parallel regions and which of their linears are
split which way; both implementations read it. `apply_manual_tp` slices the weights and hangs `f`
and `g` on each region as forward hooks, issuing the collectives itself through the ledger;
`apply_dtensor_tp` translates the plan for `torch.distributed.tensor.parallel.parallelize_module`
(ColwiseParallel / RowwiseParallel, with PrepareModuleInput so that q, k, v share one backward
all_reduce), torchtitan's `apply_tp`. Neither touches a forward: the model's attention infers its
local head count from the projections' width and its MLP reads its width from the weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from nanigpt.parallel.ledger import Ledger


@dataclass(frozen=True)
class Region:
    """A module whose forward is one Megatron parallel region: replicated input, reduced output."""

    path: str  # the module inside a block
    inputs: int  # its positional inputs; the first is the activation, the rest pass unchanged
    colwise: tuple[str, ...]  # linears split by output features (nn.Linear weight dim 0)
    rowwise: tuple[str, ...]  # linears split by input features (weight dim 1)


ATTENTION = Region("attn", 3, ("wq", "wk", "wv"), ("wo",))
MLP = Region("mlp", 1, ("w_gate", "w_up"), ("w_down",))


def tp_regions(block: nn.Module) -> tuple[Region, ...]:
    """The parallel regions of one block: attention always, the MLP when dense (MoE layers stay
    replicated under TP; their experts are split by expert parallelism instead)."""
    return (ATTENTION,) if block.is_moe else (ATTENTION, MLP)


def tp_sharded(model: nn.Module) -> dict[str, int]:
    """{parameter name: the weight dim TP slices} for every weight the plan shards."""
    out = {}
    for i, block in enumerate(model.blocks):
        for region in tp_regions(block):
            for dim, names in ((0, region.colwise), (1, region.rowwise)):
                out.update({f"blocks.{i}.{region.path}.{n}.weight": dim for n in names})
    return out


# --- hand-written ---------------------------------------------------------------------------


class _CopyToTP(torch.autograd.Function):
    """Megatron's f: identity forward; all_reduce of the gradient backward."""

    @staticmethod
    def forward(ctx, x, comm):
        ctx.comm = comm
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        ctx.comm.all_reduce(grad)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    """Megatron's g: all_reduce forward; identity backward."""

    @staticmethod
    def forward(ctx, x, comm):
        x = x.contiguous()
        comm.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class TPComm:
    def __init__(self, ledger: Ledger, group, group_name: str = "tp"):
        self.ledger, self.group, self.group_name = ledger, group, group_name

    def all_reduce(self, t: torch.Tensor) -> None:
        self.ledger.all_reduce(
            t, group=self.group, group_name=self.group_name, purpose="activation"
        )

    def enter_region(self, module: nn.Module, args: tuple) -> tuple:
        """Forward pre-hook: `f` on the region's activation input."""
        return (_CopyToTP.apply(args[0], self), *args[1:])

    def leave_region(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        """Forward hook: `g` on the region's partial output."""
        return _ReduceFromTP.apply(out, self)


def _shard(linear: nn.Linear, dim: int, rank: int, n: int) -> None:
    w = linear.weight.detach()
    size = w.shape[dim] // n
    linear.weight = nn.Parameter(w.narrow(dim, rank * size, size).clone())


def apply_manual_tp(
    model: nn.Module, group, ledger: Ledger, group_name: str = "tp"
) -> dict[str, int]:
    """Shard every region of `tp_regions` over `group`, hang f / g on it; returns `tp_sharded`."""
    import torch.distributed as dist

    n, rank = dist.get_world_size(group), dist.get_rank(group)
    comm = TPComm(ledger, group, group_name)
    for block in model.blocks:
        for region in tp_regions(block):
            module = block.get_submodule(region.path)
            for dim, names in ((0, region.colwise), (1, region.rowwise)):
                for name in names:
                    _shard(getattr(module, name), dim, rank, n)
            module.register_forward_pre_hook(comm.enter_region)
            module.register_forward_hook(comm.leave_region)
    return tp_sharded(model)


# --- DTensor ---------------------------------------------------------------------------------


def apply_dtensor_tp(model: nn.Module, tp_mesh) -> None:
    """The same layout through `parallelize_module` on a 1-D tp mesh (composes with FSDP2)."""
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        parallelize_module,
    )

    for block in model.blocks:
        plan = {}
        for region in tp_regions(block):
            layouts = (Replicate(),) + (None,) * (region.inputs - 1)
            plan[region.path] = PrepareModuleInput(
                input_layouts=layouts, desired_input_layouts=layouts, use_local_output=False
            )
            plan.update({f"{region.path}.{n}": ColwiseParallel() for n in region.colwise})
            plan.update({f"{region.path}.{n}": RowwiseParallel() for n in region.rowwise})
        parallelize_module(block, tp_mesh, plan)


def expected_activation_bytes(model: nn.Module, batch: int, seq: int, dtype_bytes: int = 4) -> int:
    """Per step, forward + backward: 2 all_reduces (one forward, one backward) of
    batch*seq*d_model per parallel region: 4 per dense layer, 2 per MoE layer (attention only)."""
    per = batch * seq * model.cfg.d_model * dtype_bytes
    return sum(2 * len(tp_regions(b)) * per for b in model.blocks)
