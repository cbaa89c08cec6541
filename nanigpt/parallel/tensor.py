"""Tensor parallelism (Megatron-LM, Shoeybi et al. 2019): hand-written, and through DTensor.

Serves core question 2: TP splits each block's matrices over the `tp` group and pays with
activation collectives inside every layer. Attention: wq, wk, wv are split by columns (whole heads
per rank), wo by rows; MLP: w_gate, w_up by columns, w_down by rows. Each parallel region starts
with `f` (identity forward, all_reduce of the input gradient backward) and ends with `g` (all_reduce
of the partial outputs forward, identity backward), Megatron section 3 figure 3. Per dense layer and
step that is 2 all_reduces forward and 2 backward of batch*seq*d_model activations; embeddings,
norms, the head and MoE layers stay replicated (their gradients come out equal on every tp rank,
because the inputs and the output gradients they see are already reduced).

`apply_manual_tp` issues those collectives itself through the ledger; `apply_dtensor_tp` asks
`torch.distributed.tensor.parallel.parallelize_module` for the same layout (ColwiseParallel /
RowwiseParallel, with PrepareModuleInput so that q, k, v share one backward all_reduce). The model's
attention reshapes with `n_head`, so both replace its forward by one that infers the local head count.
"""

from __future__ import annotations

import types

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanigpt.model.gpt import apply_rotary
from nanigpt.parallel.ledger import Ledger


def _attention_forward(self, x, cos, sin):
    """The model's attention forward with the head count taken from the (possibly local) width."""
    B, T, _ = x.shape
    q, k, v = (
        w(x).view(B, T, -1, self.head_dim).transpose(1, 2) for w in (self.wq, self.wk, self.wv)
    )
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return self.wo(y.transpose(1, 2).reshape(B, T, -1))


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


def _shard(linear: nn.Linear, dim: int, rank: int, n: int) -> None:
    w = linear.weight.detach()
    size = w.shape[dim] // n
    local = w.narrow(dim, rank * size, size).clone()
    linear.weight = nn.Parameter(local)
    linear.weight._nanigpt_sharded = ("tp",)  # distinct on every tp rank (for the global grad norm)


def apply_manual_tp(model: nn.Module, group, ledger: Ledger, group_name: str = "tp") -> None:
    """Shard every block's attention and dense MLP over `group`, with explicit f / g collectives."""
    import torch.distributed as dist

    n, rank = dist.get_world_size(group), dist.get_rank(group)
    comm = TPComm(ledger, group, group_name)
    for block in model.blocks:
        attn = block.attn
        for lin in (attn.wq, attn.wk, attn.wv):
            _shard(lin, 0, rank, n)
        _shard(attn.wo, 1, rank, n)

        def attn_forward(self, x, cos, sin, _comm=comm):
            y = _attention_forward(self, _CopyToTP.apply(x, _comm), cos, sin)
            return _ReduceFromTP.apply(y, _comm)

        attn.forward = types.MethodType(attn_forward, attn)
        if block.is_moe:
            continue  # MoE layers stay replicated under TP (experts are split by EP instead)
        mlp = block.mlp
        _shard(mlp.w_gate, 0, rank, n)
        _shard(mlp.w_up, 0, rank, n)
        _shard(mlp.w_down, 1, rank, n)

        def mlp_forward(self, x, _comm=comm):
            x = _CopyToTP.apply(x, _comm)
            y = self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))
            return _ReduceFromTP.apply(y, _comm)

        mlp.forward = types.MethodType(mlp_forward, mlp)


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
        plan = {
            "attn": PrepareModuleInput(
                input_layouts=(Replicate(), None, None),
                desired_input_layouts=(Replicate(), None, None),
                use_local_output=False,
            ),
            "attn.wq": ColwiseParallel(),
            "attn.wk": ColwiseParallel(),
            "attn.wv": ColwiseParallel(),
            "attn.wo": RowwiseParallel(),
        }
        if not block.is_moe:
            plan.update(
                {
                    "mlp": PrepareModuleInput(
                        input_layouts=(Replicate(),),
                        desired_input_layouts=(Replicate(),),
                        use_local_output=False,
                    ),
                    "mlp.w_gate": ColwiseParallel(),
                    "mlp.w_up": ColwiseParallel(),
                    "mlp.w_down": RowwiseParallel(),
                }
            )
        parallelize_module(block, tp_mesh, plan)
        block.attn.forward = types.MethodType(_attention_forward, block.attn)


def expected_activation_bytes(model: nn.Module, batch: int, seq: int, dtype_bytes: int = 4) -> int:
    """Per step, forward + backward: 4 all_reduces of batch*seq*d_model per TP'd (dense) layer;
    MoE layers shard only attention: 2."""
    d = model.cfg.d_model
    per = batch * seq * d * dtype_bytes
    return sum((2 if b.is_moe else 4) * per for b in model.blocks)
