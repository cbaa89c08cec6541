"""Expert parallelism: each rank of the `ep` group holds num_experts/ep experts; tokens travel.

Serves core question 2 (and 3: what an MoE costs in communication). GShard (Lepikhin et al. 2020)
dispatch and combine, as in DeepSpeed-MoE and MegaBlocks:
1. route locally with `nanigpt.model.moe.MoE.route` (gate, top-k, capacity or dropless), so
   the assignments computed are the ones a single process computes on this rank's tokens;
2. exchange the per-expert counts with one all_to_all (so every rank knows how many rows it will
   receive for each of its experts before the payload moves);
3. all_to_all the rows (uneven splits), regroup them by local expert, run the local experts;
4. all_to_all the outputs back along the reverse splits, weight them by the gates and scatter-add.
Backward runs the two payload all_to_alls in reverse. Per MoE layer and step: 1 counts exchange and
2 payload all_to_alls forward, 2 backward; the payload is the routed rows (k per kept token).

Gradients: an expert's weights see the tokens of every ep rank, so its gradient is the sum of the
ep ranks' losses; data parallel averaging is over dp*fsdp*ep ranks, so expert gradients are scaled
by 1/ep in backward (`_ScaleGrad`), and then only averaged over the dp (or fsdp) copies of the
same expert. The model's MoE forward has no dispatch seam, so `apply_ep` replaces it with
`ep_moe_forward`, which calls the layer's own `route`, `combine` and `losses_and_stats` around
the exchange (so every gate, capacity and drop rule of the layer holds under EP too).
"""

from __future__ import annotations

import types

import torch
import torch.distributed as dist
import torch.nn as nn

from nanigpt.model.moe import experts_grouped, experts_loop, grouped_mm_supported
from nanigpt.parallel.ledger import Ledger

EXPERT_PARAMS = ("w_gate", "w_up", "w_down")


class EPComm:
    def __init__(self, ledger: Ledger, group, group_name: str = "ep"):
        self.ledger, self.group, self.group_name = ledger, group, group_name
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, out_splits, in_splits, comm):
        ctx.splits, ctx.comm = (out_splits, in_splits), comm
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        comm.ledger.all_to_all(
            out, x.contiguous(), out_splits, in_splits, group=comm.group, group_name=comm.group_name
        )
        return out

    @staticmethod
    def backward(ctx, grad):
        out_splits, in_splits = ctx.splits
        comm = ctx.comm
        gin = grad.new_empty((sum(in_splits), *grad.shape[1:]))
        comm.ledger.all_to_all(
            gin,
            grad.contiguous(),
            in_splits,
            out_splits,
            group=comm.group,
            group_name=comm.group_name,
        )
        return gin, None, None, None


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, scale):
        ctx.scale = scale
        return w.view_as(w)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def ep_moe_forward(self, x: torch.Tensor):
    """`MoE.forward` with the experts on other ranks (see the module docstring)."""
    comm: EPComm = self._ep
    shape = x.shape
    x = x.reshape(-1, self.d_model)
    n_ranks, local_experts = comm.size, self.num_experts // comm.size

    # --- routing: MoE.route itself, so EP routes exactly as one process does ---
    r = self.route(x)
    kept = r.kept
    xs = x[r.rows]  # sorted by global expert id, so contiguous per destination rank

    # --- dispatch: counts first, then the rows ---
    send_counts = kept.to(torch.int64).contiguous()  # [n_ranks * local_experts]
    recv_counts = torch.empty_like(send_counts)
    comm.ledger.all_to_all(
        recv_counts, send_counts, group=comm.group, group_name=comm.group_name, purpose="counts"
    )
    send_matrix = send_counts.view(n_ranks, local_experts)
    recv_matrix = recv_counts.view(n_ranks, local_experts)  # [source rank, local expert]
    in_splits = send_matrix.sum(1).tolist()
    out_splits = recv_matrix.sum(1).tolist()
    recv = _AllToAll.apply(xs, out_splits, in_splits, comm)

    # Received rows are grouped by source rank, then by expert: regroup by expert, then source.
    rm = recv_matrix.tolist()
    starts, offset = [], 0
    for s in range(n_ranks):
        row_starts = []
        for e in range(local_experts):
            row_starts.append(offset)
            offset += rm[s][e]
        starts.append(row_starts)
    perm = [
        i
        for e in range(local_experts)
        for s in range(n_ranks)
        for i in range(starts[s][e], starts[s][e] + rm[s][e])
    ]
    perm_t = torch.tensor(perm, dtype=torch.long, device=x.device)
    local_counts = recv_matrix.sum(0)
    xe = recv.index_select(0, perm_t)

    scale = 1.0 / n_ranks
    w = [_ScaleGrad.apply(getattr(self, name), scale) for name in EXPERT_PARAMS]
    impl = self.impl
    if impl == "auto":
        impl = "grouped" if grouped_mm_supported(xe, self.d_model, self.hidden) else "loop"
    if impl == "grouped":
        ye = experts_grouped(xe, local_counts, *[p.to(xe.dtype) for p in w])
    else:
        ye = experts_loop(xe, local_counts.tolist(), *w)
    y_recv = ye.index_select(0, torch.argsort(perm_t))
    ys = _AllToAll.apply(y_recv, in_splits, out_splits, comm)  # back along the reverse splits

    # --- combine, losses and stats: MoE's own ---
    out = self.combine(x, r, ys)
    aux_loss, stats = self.losses_and_stats(r, shape)
    stats["ep_rows_sent"] = torch.tensor(sum(in_splits) - in_splits[comm.rank])
    return out.reshape(shape), aux_loss, stats


def apply_ep(model: nn.Module, group, ledger: Ledger, group_name: str = "ep") -> list[nn.Parameter]:
    """Keep this rank's slice of every MoE layer's experts; returns the expert parameters."""
    comm = EPComm(ledger, group, group_name)
    n, rank = comm.size, comm.rank
    expert_params = []
    for block in model.blocks:
        if not block.is_moe:
            continue
        moe = block.mlp
        if moe.num_experts % n:
            raise ValueError(
                f"parallelism.ep={n}: does not divide the {moe.num_experts} routed experts"
            )
        local = moe.num_experts // n
        for name in EXPERT_PARAMS:
            full = getattr(moe, name).detach()
            p = nn.Parameter(full[rank * local : (rank + 1) * local].clone())
            p._nanigpt_sharded = ("ep",)
            p._nanigpt_expert = True
            setattr(moe, name, p)
            expert_params.append(p)
        moe._ep = comm
        moe.forward = types.MethodType(ep_moe_forward, moe)
    return expert_params


def is_expert_param(p: torch.Tensor) -> bool:
    return getattr(p, "_nanigpt_expert", False)
