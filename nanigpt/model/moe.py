"""Mixture-of-experts MLP: the one place where the MoE and the dense GPT differ.

Serves core question 3 (when and why do MoEs win): the layer is a drop-in replacement of the dense
SwiGLU MLP, so an MoE run and a dense run differ only here, and it reports what the measurement
code needs to explain a win or a loss: per-expert load, the fraction of tokens dropped, the router's
entropy and each token's chosen experts (to compare against the known sources of the synthetic data).

Reading order: `MoEConfig`, the router, the two expert kernels (a loop over experts, the readable
reference, and `torch._grouped_mm`, the fast path), then `MoE` which ties them together.

Semantics, with their sources:
- Router: softmax over experts, top-k. Top-1 gates are the raw router probability (Switch,
  Fedus et al. 2021), so the main loss trains the router; top-k > 1 renormalises the chosen k
  probabilities to sum to one (GShard, Lepikhin et al. 2020; Mixtral).
- Capacity (when `capacity_factor` is set): each expert takes at most
  `ceil(capacity_factor * tokens * k / experts)` assignments of the batch; first choices are served
  before second choices, and within a choice rank earlier tokens first (GShard). A dropped
  assignment contributes zero, so a token dropped by all its experts passes through the residual
  unchanged (Switch section 2.2). `capacity_factor=None` is dropless (MegaBlocks, Gale et al. 2022):
  every assignment is computed, tokens sorted by expert and run through one grouped matmul.
  Capacity is shared by all tokens of the forward call, so dropping couples them: only dropless
  (or top-1 on a single sequence) keeps the model strictly causal (tests/test_model.py).
- Load-balancing loss (Switch eq. 4): `E * sum_i f_i * P_i`, `f_i` the fraction of assignments sent
  to expert i (before capacity), `P_i` the mean router probability of expert i. Equals 1.0 whenever
  the router is uniform, which is the Switch normalisation.
- Router z-loss (ST-MoE, Zoph et al. 2022 eq. 5): mean over tokens of `logsumexp(logits)^2`.
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
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

IMPLS = ("auto", "grouped", "loop")


@dataclass(frozen=True)
class MoEConfig:
    num_experts: int
    top_k: int = 1
    capacity_factor: float | None = None  # None = dropless
    aux_loss_weight: float = 0.01  # Switch uses 1e-2
    z_loss_weight: float = 0.001  # ST-MoE uses 1e-3
    every: int = 1  # layer i is MoE when (i + 1) % every == 0
    shared_expert: bool = False
    granularity: int = 1

    def __post_init__(self) -> None:
        def bad(key: str, value: object, expected: str) -> ValueError:
            return ValueError(f"model.moe.{key}={value!r}: expected {expected}")

        for key in ("num_experts", "top_k", "every", "granularity"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(key, value, "an integer >= 1")
        if self.top_k > self.num_experts:
            raise bad(
                "top_k",
                self.top_k,
                f"at most num_experts={self.num_experts} (a token cannot pick more experts than exist)",
            )
        if self.capacity_factor is not None and not self.capacity_factor > 0:
            raise bad("capacity_factor", self.capacity_factor, "a number > 0, or null for dropless")
        for key in ("aux_loss_weight", "z_loss_weight"):
            value = getattr(self, key)
            if not isinstance(value, int | float) or value < 0:
                raise bad(key, value, "a number >= 0")
        if not isinstance(self.shared_expert, bool):
            raise bad("shared_expert", self.shared_expert, "true or false")

    @property
    def num_routed_experts(self) -> int:
        """Experts the router chooses among: num_experts * granularity."""
        return self.num_experts * self.granularity

    @property
    def active_experts(self) -> int:
        """Routed experts each token uses: top_k * granularity."""
        return self.top_k * self.granularity

    def expert_hidden(self, dense_hidden: int) -> int:
        """Width of one routed (and of the shared) expert: the dense MLP width / granularity."""
        if dense_hidden % self.granularity:
            raise ValueError(
                f"model.moe.granularity={self.granularity}: the dense MLP width {dense_hidden} is not "
                f"divisible by it; expected a granularity dividing {dense_hidden}"
            )
        return dense_hidden // self.granularity


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


class SwiGLU(nn.Module):
    """The dense MLP (Shazeer 2020): w_down(silu(w_gate x) * w_up x), no biases."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.w_gate = nn.Linear(d_model, hidden, bias=False)
        self.w_up = nn.Linear(d_model, hidden, bias=False)
        self.w_down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class MoE(nn.Module):
    """Top-k routed SwiGLU experts; returns (output, weighted aux loss, stats).

    Expert weights are stacked `[experts, in, out]` so that `x @ w[e]` and the grouped matmul use
    them as stored, and expert parallelism can shard dim 0 from outside.
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

    def capacity(self, n_tokens: int) -> int:
        """Assignments one expert may take (GShard): ceil(cf * tokens * k / experts), capped at tokens * k."""
        cf = self.cfg.capacity_factor
        most = n_tokens * self.top_k
        if cf is None or math.isinf(cf):
            return most
        return min(most, math.ceil(cf * n_tokens * self.top_k / self.num_experts))

    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        shape = x.shape
        x = x.reshape(-1, self.d_model)
        n_tokens, n_experts, k = x.shape[0], self.num_experts, self.top_k

        # Router in fp32 (Switch: selective precision keeps the softmax stable).
        logits = self.router(x).float()
        probs = logits.softmax(-1)
        top_probs, top_idx = probs.topk(k, dim=-1)  # [N, k]
        gates = top_probs if k == 1 else top_probs / top_probs.sum(-1, keepdim=True)

        # Assignments flattened choice-major (all first choices, then all second ...), so a stable
        # sort by expert keeps GShard's priority order within each expert.
        expert_of = top_idx.t().reshape(-1)  # [k*N]
        token_of = torch.arange(n_tokens, device=x.device).repeat(k)
        gate_of = gates.t().reshape(-1)
        order = torch.argsort(expert_of, stable=True)
        routed = torch.bincount(expert_of, minlength=n_experts)  # before capacity
        capacity = self.capacity(n_tokens)
        if capacity < n_tokens * k:
            starts = torch.cumsum(routed, 0) - routed
            position = torch.arange(order.numel(), device=x.device) - starts[expert_of[order]]
            order = order[position < capacity]
            kept = routed.clamp(max=capacity)
        else:
            kept = routed

        rows = token_of[order]
        xs = x[rows]
        impl, dtype = self.impl, xs.dtype
        if impl == "auto":
            dtype = grouped_mm_dtype(xs, self.d_model, self.hidden)
            impl = "loop" if dtype is None else "grouped"
        if impl == "grouped":
            w = [p.to(dtype) for p in (self.w_gate, self.w_up, self.w_down)]
            ys = experts_grouped(xs.to(dtype), kept, *w)
        elif impl == "loop":
            ys = experts_loop(xs, kept.tolist(), self.w_gate, self.w_up, self.w_down)
        else:
            raise ValueError(f"MoE.impl={impl!r}: expected one of {IMPLS}")
        ys = ys * gate_of[order].unsqueeze(-1).to(ys.dtype)
        out = torch.zeros_like(x, dtype=ys.dtype).index_add_(0, rows, ys).to(x.dtype)
        if self.shared is not None:
            out = out + self.shared(x)

        # Auxiliary losses (Switch eq. 4; ST-MoE eq. 5).
        load = routed.float() / (n_tokens * k)  # f_i, sums to 1
        balance_loss = n_experts * (load * probs.mean(0)).sum()
        z_loss = torch.logsumexp(logits, -1).square().mean()
        aux_loss = self.cfg.aux_loss_weight * balance_loss + self.cfg.z_loss_weight * z_loss

        entropy = -(probs * logits.log_softmax(-1)).sum(-1).mean()
        stats = {
            "load": load.detach(),  # [E] fraction of assignments routed to each expert (pre-capacity)
            "tokens_per_expert": kept.detach(),  # [E] assignments computed (post-capacity)
            "dropped_frac": (1 - kept.sum() / (n_tokens * k)).detach(),
            "router_entropy": entropy.detach(),  # nats, mean over tokens
            "balance_loss": balance_loss.detach(),  # unweighted
            "z_loss": z_loss.detach(),  # unweighted
            "expert_index": top_idx.detach().reshape(*shape[:-1], k),  # each token's choices
        }
        return out.reshape(shape), aux_loss, stats
