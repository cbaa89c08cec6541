"""Mixture-of-experts MLP: the one place where the MoE and the dense GPT differ.

Serves core question 3 (when and why do MoEs win): the layer is a drop-in replacement of the dense
SwiGLU MLP, so an MoE run and a dense run differ only here, and it reports what the measurement
code needs to explain a win or a loss: per-expert load, the fraction of tokens dropped, the router's
entropy and each token's chosen experts (to compare against the known sources of the synthetic data).

Reading order: `MoEConfig`, the router, the two expert kernels (a loop over experts, the readable
reference, and `torch._grouped_mm`, the fast path), the local token dispatcher, then `MoE` which
ties them together as route -> dispatch -> experts -> combine.

Semantics, with their sources:
- Router: logits computed in fp32 from the fp32 input and weight, autocast off around the matmul
  (Switch's selective precision; under bf16 autocast a Linear would round both operands first).
- `gate` (`MoEConfig.gate`), how the chosen experts' outputs are weighted:
  - `switch`: softmax over experts, top-k; the top-1 gate is the raw router probability (Switch,
    Fedus et al. 2021), kept as the reference. It starts near 1/E, so the MoE's MLP output starts E
    times smaller than the dense MLP's and stays damped through a short run.
  - `renorm` (default): softmax, top-k, the chosen probabilities renormalised to sum to one (GShard,
    Lepikhin et al. 2020; Mixtral). At k = 1 that is a gate of exactly 1 in the forward pass,
    written p / p.detach() so the router still gets the gradient d(log p) (`keep_grad_normalise`);
    with one expert the layer is exactly the dense MLP (tests/test_moe.py).
  - `sigmoid`: per-expert sigmoid scores, normalised over the chosen experts as `renorm` does,
    with auxiliary-loss-free balancing (DeepSeek-V3, arXiv 2412.19437, section 2.1.2): a bias per
    expert is added to the scores for the top-k selection only (never to the gate), and after every
    optimizer step each bias moves by `bias_update_rate` (gamma) toward balance:
    b_i += gamma * sign(mean load - load_i), loads counted over the step's training forward passes
    (`update_bias`, called by the trainer through `update_router_biases`; outside autograd, and
    never on evaluation or no-grad passes), summed over ranks by the layer's `load_reduction`,
    which `nanigpt.parallel` sets. The bias is a buffer saved with the weights. The balance
    loss then reads the normalised scores; set `aux_loss_weight: 0` for DeepSeek-V3's
    aux-loss-free setting (it keeps a tiny sequence-wise loss; we keep the batch-wise one optional).
- Capacity (when the mode's factor is set): each expert takes at most
  `ceil(capacity_factor * tokens * k / experts)` assignments of the forward call. `capacity_factor`
  applies in training mode, `eval_capacity_factor` (default null: dropless) in eval mode, so a
  validation loss never depends on how the batch was laid out. Which assignments drop does not
  depend on a token's row: within an expert, first choices before second choices, and within a
  choice the more confident assignment (higher router score) first: batch-prioritized routing
  (Riquelme et al. 2021, V-MoE, section 3.3). A dropped assignment contributes zero, so a token
  dropped by all its experts passes through the residual unchanged (Switch section 2.2).
  Null is dropless (MegaBlocks, Gale et al. 2022): every assignment is computed, tokens sorted by
  expert and run through one grouped matmul. Capacity is shared by all tokens of the forward call,
  so dropping couples them: only dropless keeps the model strictly causal (tests/test_model.py).
- `dense_layers`: the first that many layers keep the dense MLP (DeepSeekMoE's first layer;
  `GPTConfig.moe_layers`).
- Defaults, chosen by measurement (README "Mixture of experts" has the table): at s2 / 200k tokens on
  the default mixture, 4 experts top-1, 3 seeds (validation bits/byte, mean and seed range),
  dense 1.074 (1.054-1.089); `switch` 1.173 (1.126-1.213), worse than dense in every seed;
  `renorm` with capacity 1.25 in training 1.064 (1.047-1.081) and dropless 1.064 (1.056-1.069),
  both no different from dense; `sigmoid` with aux-loss-free bias and no balance loss 1.098
  (1.068-1.144), no different from dense but with the widest spread. Hence `renorm`, capacity 1.25
  in training (same loss as dropless, bounded per-expert work) and dropless evaluation.
- Load-balancing loss (Switch eq. 4), weighted by `aux_loss_weight`: `E * sum_i f_i * P_i`, `f_i` the
  fraction of assignments sent to expert i (before capacity), `P_i` the mean router probability
  (normalised score for `sigmoid`) of expert i. Equals 1.0 whenever
  the router is uniform, which is the Switch normalisation.
- Router z-loss (ST-MoE, Zoph et al. 2022 eq. 5), weighted by `z_loss_weight`: mean over tokens of
  `logsumexp(logits)^2`.
- Fine-grained experts (DeepSeekMoE, Dai et al. 2024; Krajewski et al. 2024): granularity g makes
  g times more experts, each g times narrower, and routes each token to g times more of them, so
  total and active parameters and FLOPs match the g = 1 model.
- Expert kernels: `torch._grouped_mm` where the device supports it (CUDA sm90+, bf16; seen equal to
  the loop within bf16 rounding and 1.4x faster fwd+bwd on an H100 at 16k tokens, 8 experts, d=1024),
  a loop over experts elsewhere; `tests/test_moe.py` holds the two equal on CPU in float32.
- Shared expert (DeepSeekMoE): one always-active expert of the routed experts' width, added to the
  routed output. It adds its parameters and FLOPs on top (counted in `nanigpt.model.flops`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanigpt.model.config import MoEConfig
from nanigpt.model.flops import register_grouped_mm_flops
from nanigpt.model.mlp import SwiGLU

register_grouped_mm_flops()  # profiles of the grouped expert path count its FLOPs

IMPLS = ("auto", "grouped", "loop")


class Routing(NamedTuple):
    """One forward call's routing: what the experts compute and what the losses and stats read."""

    logits: torch.Tensor  # [N, E] fp32 router logits
    probs: torch.Tensor  # [N, E] per-token affinities summing to 1 (balance loss, entropy)
    top_idx: torch.Tensor  # [N, k] chosen experts, best first
    order: torch.Tensor  # kept assignments (choice-major indices), grouped by expert
    gate_of: torch.Tensor  # [k*N] gate of every assignment, choice-major
    rows: torch.Tensor  # token row of each kept assignment, in `order`
    routed: torch.Tensor  # [E] assignments per expert before capacity
    kept: torch.Tensor  # [E] assignments per expert after capacity


def keep_grad_normalise(top: torch.Tensor) -> torch.Tensor:
    """Gates of the chosen experts summing to one (GShard, Mixtral). At k = 1 the plain quotient
    p / p is 1 with no gradient, so it is written p / p.detach(): 1 in the forward pass, d(log p)
    into the router in the backward pass (the straight-through form of a gate of one)."""
    if top.shape[-1] == 1:
        return top / top.detach()
    return top / top.sum(-1, keepdim=True)


# --- expert kernels: y_e = (silu(x W_gate[e]) * x W_up[e]) W_down[e] for the rows of each expert ---


def experts_loop(
    x: torch.Tensor,
    counts: list[int],
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
) -> torch.Tensor:
    """Reference: rows of `x` are grouped by expert (`counts[e]` rows for expert e, in order).

    Experts with no rows still run (a 0-row matmul) so every expert weight gets a gradient.
    """
    outs = []
    for e, xe in enumerate(x.split(counts)):
        h = F.silu(xe @ w_gate[e]) * (xe @ w_up[e])
        outs.append(h @ w_down[e])
    return torch.cat(outs)


def experts_grouped(
    x: torch.Tensor,
    counts: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
) -> torch.Tensor:
    """Fast path: the same computation as `experts_loop` as three grouped matmuls.

    `torch._grouped_mm(x, w, offs)` multiplies rows `offs[e-1]:offs[e]` of x by `w[e]`; offsets are
    cumulative int32 row counts. No host sync on the counts, unlike the loop.
    """
    offs = torch.cumsum(counts, 0, dtype=torch.int32)
    h = F.silu(torch._grouped_mm(x, w_gate, offs)) * torch._grouped_mm(x, w_up, offs)
    return torch._grouped_mm(h, w_down, offs)


def grouped_mm_dtype(x: torch.Tensor, d_model: int, hidden: int) -> torch.dtype | None:
    """The dtype `auto` runs the grouped path in, or None for the loop.

    Grouped where the device supports it: CUDA sm90+ in bf16 (the input's dtype or autocast's),
    with 16-byte aligned rows. (torch 2.15 also runs `_grouped_mm` on CPU; `impl="grouped"` forces
    it there, which the tests use.)
    """
    if not x.is_cuda or torch.cuda.get_device_capability(x.device) < (9, 0):
        return None
    if d_model % 8 or hidden % 8:
        return None
    autocast = torch.is_autocast_enabled("cuda")
    dtype = torch.get_autocast_dtype("cuda") if autocast else x.dtype
    return dtype if dtype == torch.bfloat16 else None


def grouped_mm_supported(x: torch.Tensor, d_model: int, hidden: int) -> bool:
    """Whether the grouped path runs on `x` as it is (bf16 on CUDA sm90+), autocast aside."""
    return x.dtype == torch.bfloat16 and grouped_mm_dtype(x, d_model, hidden) is not None


class Dispatched(NamedTuple):
    """What a token dispatcher hands the experts, and what it needs to send their outputs back."""

    rows: torch.Tensor  # [M, d_model] rows this process's experts compute, grouped by local expert
    counts: torch.Tensor  # [local experts] rows of each local expert, in `rows`' order
    handle: Any = None  # the dispatcher's own record of the exchange, for `combine` and `stats`


class LocalDispatcher:
    """The token dispatcher of one process holding every expert (Megatron-LM's
    `MoEAllGatherTokenDispatcher` at one rank; torchtitan's MoE without expert parallelism).

    A dispatcher answers four questions of `MoE.forward`: which rows the local experts compute
    (`dispatch`), which weights they compute them with (`expert_weights`, where expert parallelism
    scales the gradient), how the outputs come back in the routing's order (`combine`), and what it
    adds to the layer's statistics (`stats`). Here: the kept rows in expert order, the layer's own
    weights, the outputs as they are, nothing.
    """

    def dispatch(self, x: torch.Tensor, r: Routing) -> Dispatched:
        return Dispatched(x[r.rows], r.kept)

    def expert_weights(self, moe: MoE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return moe.w_gate, moe.w_up, moe.w_down

    def combine(self, ys: torch.Tensor, sent: Dispatched) -> torch.Tensor:
        return ys

    def stats(self, sent: Dispatched) -> dict[str, torch.Tensor]:
        return {}


def capacity_order(
    expert_of: torch.Tensor,
    routed: torch.Tensor,
    capacity: int,
    confidence: torch.Tensor,
    choice_of: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The assignments each expert keeps, grouped by expert, and how many each keeps.

    Batch-prioritized routing (V-MoE, Riquelme et al. 2021): within an expert, first choices before
    second choices (`choice_of`, per flattened assignment), and within a choice the more confident
    assignment first, so which tokens drop depends on the router's scores, never on a token's row
    in the batch; each expert keeps its first `capacity`. `nanigpt.training.stacked` calls it with
    K replicas' experts numbered apart."""
    order = torch.argsort(confidence, descending=True, stable=True)
    order = order[torch.argsort(choice_of[order], stable=True)]
    order = order[torch.argsort(expert_of[order], stable=True)]
    starts = torch.cumsum(routed, 0) - routed
    position = torch.arange(order.numel(), device=expert_of.device) - starts[expert_of[order]]
    return order[position < capacity], routed.clamp(max=capacity)


class MoE(nn.Module):
    """Top-k routed SwiGLU experts; returns (output, weighted aux loss, stats).

    Expert weights are stacked `[experts, in, out]` so that `x @ w[e]` and the grouped matmul use
    them as stored, and expert parallelism can shard dim 0 from outside. The forward is four steps,
    route -> dispatch -> experts -> combine (torchtitan's router, token dispatcher, grouped experts;
    Megatron-LM's `MoELayer`): `dispatcher` is the seam where expert parallelism puts its
    all-to-all dispatcher (`nanigpt.parallel.expert`), everything else runs as it is.
    """

    def __init__(self, d_model: int, dense_hidden: int, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.d_model = d_model
        self.hidden = cfg.expert_hidden(dense_hidden)
        self.num_experts = cfg.num_routed_experts
        self.top_k = cfg.active_experts
        self.impl = "auto"  # "auto" | "grouped" | "loop"; an implementation choice, not a config
        self.router = nn.Linear(d_model, self.num_experts, bias=False)
        self.w_gate = nn.Parameter(torch.empty(self.num_experts, d_model, self.hidden))
        self.w_up = nn.Parameter(torch.empty(self.num_experts, d_model, self.hidden))
        self.w_down = nn.Parameter(torch.empty(self.num_experts, self.hidden, d_model))
        self.shared = SwiGLU(d_model, self.hidden) if cfg.shared_expert else None
        self.dispatcher = LocalDispatcher()  # expert parallelism swaps in its all-to-all one
        # Sums `step_load` over the ranks in place before `update_bias`; set by nanigpt.parallel
        # when there is more than one rank (the model itself knows nothing of processes).
        self.load_reduction: Callable[[torch.Tensor], Any] | None = None
        if cfg.gate == "sigmoid":
            # Selection bias of aux-loss-free balancing: a buffer (no gradient, saved with the
            # weights), moved by `update_bias` once per optimizer step from the step's loads.
            self.register_buffer("expert_bias", torch.zeros(self.num_experts))
            self.register_buffer("step_load", torch.zeros(self.num_experts), persistent=False)
        self.init_weights()

    def init_weights(self, std: float = 0.02, residual_std: float = 0.02) -> None:
        """Normal(0, std) everywhere; the projections back into the residual use `residual_std`."""
        for w in (self.router.weight, self.w_gate, self.w_up):
            nn.init.normal_(w, std=std)
        nn.init.normal_(self.w_down, std=residual_std)
        if self.shared is not None:
            nn.init.normal_(self.shared.w_gate.weight, std=std)
            nn.init.normal_(self.shared.w_up.weight, std=std)
            nn.init.normal_(self.shared.w_down.weight, std=residual_std)
        if self.cfg.gate == "sigmoid":
            self.expert_bias.zero_()
            self.step_load.zero_()

    def capacity(self, n_tokens: int) -> int:
        """Assignments one expert may take (GShard): ceil(cf * tokens * k / experts), capped at
        tokens * k; cf is `capacity_factor` in training mode, `eval_capacity_factor` otherwise."""
        cf = self.cfg.capacity_factor if self.training else self.cfg.eval_capacity_factor
        most = n_tokens * self.top_k
        if cf is None or math.isinf(cf):
            return most
        return min(most, math.ceil(cf * n_tokens * self.top_k / self.num_experts))

    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """[N, E] logits in fp32 from the fp32 input and weight: autocast off around the matmul
        (under bf16 autocast a Linear would round both operands to bf16 first)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.router(x.float())

    def route(self, x: torch.Tensor) -> Routing:
        """Scores, top-k choice, gates and capacity for the rows of `x` ([N, d_model])."""
        n_tokens, n_experts, k = x.shape[0], self.num_experts, self.top_k
        logits = self.router_logits(x)
        if self.cfg.gate == "sigmoid":
            scores = torch.sigmoid(logits)
            top_idx = (scores + self.expert_bias).topk(k, dim=-1).indices  # bias: selection only
            top = scores.gather(-1, top_idx)
            probs = scores / scores.sum(-1, keepdim=True)
        else:
            probs = logits.softmax(-1)
            top, top_idx = probs.topk(k, dim=-1)  # [N, k]
        switch = self.cfg.gate == "switch" and k == 1
        gates = top if switch else keep_grad_normalise(top)  # Switch: the raw probability

        # Assignments flattened choice-major (all first choices, then all second ...).
        expert_of = top_idx.t().reshape(-1)  # [k*N]
        token_of = torch.arange(n_tokens, device=x.device).repeat(k)
        gate_of = gates.t().reshape(-1)
        routed = torch.bincount(expert_of, minlength=n_experts)  # before capacity
        capacity = self.capacity(n_tokens)
        if capacity < n_tokens * k:
            choice_of = torch.arange(k * n_tokens, device=x.device) // n_tokens
            order, kept = capacity_order(
                expert_of, routed, capacity, top.detach().t().reshape(-1), choice_of
            )
        else:
            order = torch.argsort(expert_of, stable=True)
            kept = routed
        if self.cfg.gate == "sigmoid" and self.training and torch.is_grad_enabled():
            self.step_load += routed.detach().float()
        return Routing(logits, probs, top_idx, order, gate_of, token_of[order], routed, kept)

    def combine(self, x: torch.Tensor, r: Routing, ys: torch.Tensor) -> torch.Tensor:
        """Weight each kept assignment's expert output by its gate and sum them per token."""
        ys = ys * r.gate_of[r.order].unsqueeze(-1).to(ys.dtype)
        out = torch.zeros_like(x, dtype=ys.dtype).index_add_(0, r.rows, ys).to(x.dtype)
        if self.shared is not None:
            out = out + self.shared(x)
        return out

    def losses_and_stats(
        self, r: Routing, shape: torch.Size
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted auxiliary loss (Switch eq. 4; ST-MoE eq. 5) and the router statistics."""
        n_tokens, k = r.logits.shape[0], self.top_k
        load = r.routed.float() / (n_tokens * k)  # f_i, sums to 1
        balance_loss = self.num_experts * (load * r.probs.mean(0)).sum()
        z_loss = torch.logsumexp(r.logits, -1).square().mean()
        aux_loss = self.cfg.aux_loss_weight * balance_loss + self.cfg.z_loss_weight * z_loss
        entropy = -(r.probs * r.probs.clamp_min(1e-30).log()).sum(-1).mean()
        stats = {
            "load": load.detach(),  # [E] fraction of assignments routed to each expert (pre-capacity)
            "tokens_per_expert": r.kept.detach(),  # [E] assignments computed (post-capacity)
            "dropped_frac": (1 - r.kept.sum() / (n_tokens * k)).detach(),
            "router_entropy": entropy.detach(),  # nats, mean over tokens
            "balance_loss": balance_loss.detach(),  # unweighted
            "z_loss": z_loss.detach(),  # unweighted
            "expert_index": r.top_idx.detach().reshape(*shape[:-1], k),  # each token's choices
        }
        return aux_loss, stats

    def experts(
        self,
        x: torch.Tensor,
        counts: torch.Tensor,
        weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """The expert SwiGLUs on rows grouped by expert (`counts[e]` rows for the e-th of `weights`),
        by the kernel `impl` names; `auto` takes the grouped matmul where `grouped_mm_dtype` allows."""
        impl, dtype = self.impl, x.dtype
        if impl == "auto":
            dtype = grouped_mm_dtype(x, self.d_model, self.hidden)
            impl = "loop" if dtype is None else "grouped"
        if impl == "grouped":
            w = [p.to(dtype) for p in weights]
            return experts_grouped(x.to(dtype), counts, *w)
        if impl == "loop":
            return experts_loop(x, counts.tolist(), *weights)
        raise ValueError(f"MoE.impl={impl!r}: expected one of {IMPLS}")

    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Route, dispatch, experts, combine (the seam `dispatcher` is what expert parallelism
        replaces), then the auxiliary losses and statistics of the routing."""
        shape = x.shape
        x = x.reshape(-1, self.d_model)
        r = self.route(x)
        sent = self.dispatcher.dispatch(x, r)
        ys = self.experts(sent.rows, sent.counts, self.dispatcher.expert_weights(self))
        out = self.combine(x, r, self.dispatcher.combine(ys, sent))
        aux_loss, stats = self.losses_and_stats(r, shape)
        stats.update(self.dispatcher.stats(sent))
        return out.reshape(shape), aux_loss, stats

    @torch.no_grad()
    def update_bias(self) -> None:
        """Aux-loss-free balancing (DeepSeek-V3 section 2.1.2): after a training step, raise the
        selection bias of each under-loaded expert and lower it for each over-loaded one by
        `bias_update_rate` (the sign of the load error), then start the next step's count."""
        if self.cfg.gate != "sigmoid":
            return
        load = self.step_load
        if self.load_reduction is not None:
            self.load_reduction(load)  # every rank applies the same update from the global load
        # no host sync: a step without load (all zero) moves no bias, since sign(0) = 0
        self.expert_bias += self.cfg.bias_update_rate * torch.sign(load.mean() - load)
        self.step_load.zero_()


def update_router_biases(model: nn.Module) -> None:
    """Call after each optimizer step: `MoE.update_bias` on every MoE layer of `model`."""
    for module in model.modules():
        if isinstance(module, MoE):
            module.update_bias()
