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
same expert. `apply_ep` only shards the expert weights and plugs `AllToAllDispatcher` into the MoE's
token-dispatcher seam (`MoE.dispatcher`; torchtitan's `ExpertParallel` on its token dispatcher,
Megatron-LM's `MoEAlltoAllTokenDispatcher`): the layer's own route, experts, combine and losses run
around the exchange, so every gate, capacity and drop rule of the layer holds under EP too.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn

from nanigpt.model.moe import Dispatched, Routing
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


def _by_expert_then_source(recv_matrix: list[list[int]]) -> list[int]:
    """Received rows come grouped by source rank, then by local expert: the permutation that
    groups them by local expert, then source rank (each expert's rows contiguous)."""
    n_ranks, local_experts = len(recv_matrix), len(recv_matrix[0])
    starts, offset = [], 0
    for s in range(n_ranks):
        row_starts = []
        for e in range(local_experts):
            row_starts.append(offset)
            offset += recv_matrix[s][e]
        starts.append(row_starts)
    return [
        i
        for e in range(local_experts)
        for s in range(n_ranks)
        for i in range(starts[s][e], starts[s][e] + recv_matrix[s][e])
    ]


class AllToAllDispatcher:
    """The MoE's token dispatcher under expert parallelism: this rank holds experts
    [rank * local, (rank + 1) * local) of every MoE layer (see the module docstring for the
    exchange). Plugged into `MoE.dispatcher` by `apply_ep`; the layer's route, experts, combine,
    losses and statistics run as they are."""

    def __init__(self, comm: EPComm):
        self.comm = comm

    def dispatch(self, x: torch.Tensor, r: Routing) -> Dispatched:
        comm = self.comm
        xs = x[r.rows]  # sorted by global expert id, so contiguous per destination rank
        # counts first, so every rank knows how many rows it receives for each of its experts
        send_counts = r.kept.to(torch.int64).contiguous()  # [n_ranks * local_experts]
        recv_counts = torch.empty_like(send_counts)
        comm.ledger.all_to_all(
            recv_counts, send_counts, group=comm.group, group_name=comm.group_name, purpose="counts"
        )
        send_matrix = send_counts.view(comm.size, -1)
        recv_matrix = recv_counts.view(comm.size, -1)  # [source rank, local expert]
        in_splits = send_matrix.sum(1).tolist()
        out_splits = recv_matrix.sum(1).tolist()
        recv = _AllToAll.apply(xs, out_splits, in_splits, comm)
        perm = _by_expert_then_source(recv_matrix.tolist())
        perm_t = torch.tensor(perm, dtype=torch.long, device=x.device)
        rows = recv.index_select(0, perm_t)
        return Dispatched(rows, recv_matrix.sum(0), (perm_t, in_splits, out_splits))

    def expert_weights(self, moe: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The local experts' weights, their gradients scaled by 1/ep (the module docstring)."""
        scale = 1.0 / self.comm.size
        w_gate, w_up, w_down = (_ScaleGrad.apply(getattr(moe, n), scale) for n in EXPERT_PARAMS)
        return w_gate, w_up, w_down

    def combine(self, ys: torch.Tensor, sent: Dispatched) -> torch.Tensor:
        """The expert outputs back to the ranks their rows came from, in the routing's order."""
        perm_t, in_splits, out_splits = sent.handle
        y_recv = ys.index_select(0, torch.argsort(perm_t))
        return _AllToAll.apply(y_recv, in_splits, out_splits, self.comm)  # the reverse splits

    def stats(self, sent: Dispatched) -> dict[str, torch.Tensor]:
        _, in_splits, _ = sent.handle
        return {"ep_rows_sent": torch.tensor(sum(in_splits) - in_splits[self.comm.rank])}


def apply_ep(model: nn.Module, group, ledger: Ledger, group_name: str = "ep") -> list[str]:
    """Keep this rank's slice of every MoE layer's experts and plug in the all-to-all dispatcher;
    returns the names of the expert parameters (sharded along dim 0 over `group`)."""
    comm = EPComm(ledger, group, group_name)
    n, rank = comm.size, comm.rank
    names = []
    for i, block in enumerate(model.blocks):
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
            setattr(moe, name, nn.Parameter(full[rank * local : (rank + 1) * local].clone()))
            names.append(f"blocks.{i}.mlp.{name}")
        moe.dispatcher = AllToAllDispatcher(comm)
    return names
