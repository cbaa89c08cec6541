"""Stacked replicas: K runs of one shape trained as one model with a leading replica dimension.

Serves the project's cost question (issue 28, "sweeps at the hardware's speed"): a scaling sweep's
lr probe and seeds are runs of one shape that differ only in their seed or scalar hyperparameters
(lr, weight decay, warmup). Trained one by one, each small step is a few dozen launch-bound kernels
on a nearly idle GPU; stacked, the K runs share every kernel (HFTA, Wang et al. 2021, "Horizontally
Fused Training Array": up to 15x on small models), so the K runs cost about one.

`StackedGPT` holds the K replicas' parameters as tensors `[K, ...]` (one per parameter of
`nanigpt.model.gpt.GPT`, same names) and computes the GPT's forward with the replica dimension:
batched matmuls (`torch.bmm`) where the GPT has `nn.Linear`, attention over K * batch rows, and a
per-replica mean cross-entropy. It does not subclass or edit the model: `from_models` stacks K
built `GPT`s (each built under its own seed, as the trainer builds it) and `load_replica` writes one
replica back into a `GPT`, so the run alone stays the reference and tests/test_stacked.py holds each
replica's losses and weights equal to it. The rotary tables and rotation are the GPT's own
(`rotary_tables`, `apply_rotary`).

MoE layers route per replica: the K replicas' E experts are numbered k * E + e, so one sort and one
grouped matmul (`nanigpt.model.moe.experts_grouped`, or the loop reference) serve all K, and each
replica's capacity, batch-prioritised drops (V-MoE), gates, balance and z-losses are those of
`nanigpt.model.moe.MoE` on that replica's tokens alone (same order of assignments within an expert).

Why this and not `torch.func.vmap` over `functional_call` (`vmap_losses` below, kept as the other
candidate and tested equal on a dense model): measured on the CPU (`python -m nanigpt.bench.sweep
--preset cpu`, 1 thread, headline shapes h4/h5, K = 8, one run 2026-12-05 on a shared 2-core
machine), vmap's step took 53 / 95 ms against this module's 50 / 85 ms: no faster on dense
models, and it cannot run the MoE at all: routing has data-dependent shapes (the kept
assignments after capacity) that vmap refuses. One implementation
that runs both archs wins.

Triton kernels (`model.kernels` other than "torch") are not stacked: `StackedGPT` refuses them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanigpt.model.config import GPTConfig
from nanigpt.model.gpt import GPT, apply_rotary, rotary_tables
from nanigpt.model.moe import (
    capacity_order,
    experts_grouped,
    experts_loop,
    grouped_mm_dtype,
    keep_grad_normalise,
)


class StackedOutput(NamedTuple):
    loss: torch.Tensor | None  # [K] mean cross-entropy of each replica, nats/token
    aux_loss: torch.Tensor  # [K] weighted MoE auxiliary losses summed over MoE layers; 0 for dense
    moe_stats: torch.Tensor | None  # [K, 3] dropped fraction, router entropy, load CV (layer mean)


def _key(name: str) -> str:
    return name.replace(".", "__")  # parameter names cannot hold dots


def _bmm_t(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [K, M, in] times each replica's `nn.Linear` weight w [K, out, in]: [K, M, out]."""
    return torch.bmm(x, w.transpose(1, 2))


def moe_capacity(cfg: Any, n_tokens: int, top_k: int, n_experts: int, training: bool) -> int:
    """`nanigpt.model.moe.MoE.capacity` for one replica's `n_tokens` (GShard)."""
    cf = cfg.capacity_factor if training else cfg.eval_capacity_factor
    most = n_tokens * top_k
    if cf is None or math.isinf(cf):
        return most
    return min(most, math.ceil(cf * n_tokens * top_k / n_experts))


class StackedGPT(nn.Module):
    """K `GPT`s of one `GPTConfig`, parameters stacked `[K, ...]`; forward on `[K, B, T]` tokens."""

    def __init__(self, cfg: GPTConfig, replicas: int):
        super().__init__()
        if refusal := cfg.reference_layout_refusal:
            raise ValueError(f"{refusal}: stacked replicas read the reference layout's weights")
        if replicas < 1:
            raise ValueError(f"replicas={replicas}: expected >= 1")
        self.cfg, self.K = cfg, replicas
        template = GPT(cfg)
        self.names = [name for name, _ in template.named_parameters()]
        for name, p in template.named_parameters():
            self.register_parameter(
                _key(name), nn.Parameter(p.detach().unsqueeze(0).repeat(replicas, *[1] * p.dim()))
            )
        self.moe_layers = set(cfg.moe_layers)
        self.moe_impl = "auto"  # as MoE.impl: "auto" | "grouped" | "loop"
        if cfg.moe is not None and cfg.moe.gate == "sigmoid":
            n_experts = cfg.moe.num_routed_experts
            for layer in self.moe_layers:
                self.register_buffer(f"expert_bias_{layer}", torch.zeros(replicas, n_experts))
                self.register_buffer(
                    f"step_load_{layer}", torch.zeros(replicas, n_experts), persistent=False
                )
        cos, sin = rotary_tables(cfg.seq_len, cfg.head_dim, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    # --- stacking and unstacking ----------------------------------------------------------------
    @classmethod
    def from_models(cls, models: Sequence[GPT]) -> StackedGPT:
        """Stack built models (one per replica, each built under its run's seed)."""
        cfg = models[0].cfg
        for m in models[1:]:
            if m.cfg != cfg:
                raise ValueError(f"stacked replicas need one config; got {cfg} and {m.cfg}")
        stacked = cls(cfg, len(models))
        stacked.to(next(models[0].parameters()).device)
        with torch.no_grad():
            for k, m in enumerate(models):
                stacked.load_from(m, k)
        return stacked

    def param(self, name: str) -> torch.Tensor:
        return getattr(self, _key(name))

    def stacked_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(GPT parameter name, stacked parameter), in the GPT's order."""
        return [(name, self.param(name)) for name in self.names]

    @torch.no_grad()
    def load_from(self, model: GPT, k: int) -> None:
        """Replica k's parameters (and MoE selection biases) from a GPT."""
        for name, p in model.named_parameters():
            self.param(name)[k].copy_(p)
        for layer in self.moe_layers:
            if hasattr(self, f"expert_bias_{layer}"):
                getattr(self, f"expert_bias_{layer}")[k].copy_(model.blocks[layer].mlp.expert_bias)

    @torch.no_grad()
    def load_replica(self, model: GPT, k: int) -> GPT:
        """Write replica k into `model` (a GPT of the same config); returns it."""
        for name, p in model.named_parameters():
            p.copy_(self.param(name)[k])
        for layer in self.moe_layers:
            if hasattr(self, f"expert_bias_{layer}"):
                model.blocks[layer].mlp.expert_bias.copy_(getattr(self, f"expert_bias_{layer}")[k])
        return model

    # --- forward ----------------------------------------------------------------------------------
    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        w = self.param(name)
        return F.rms_norm(x, (x.shape[-1],), eps=self.cfg.norm_eps) * w[:, None, :]

    def _attention(self, h: torch.Tensor, layer: int, B: int, T: int) -> torch.Tensor:
        K, hd = self.K, self.cfg.head_dim
        pre = f"blocks.{layer}.attn."
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        q, k, v = (
            _bmm_t(h, self.param(pre + f"{w}.weight")).view(K * B, T, -1, hd).transpose(1, 2)
            for w in ("wq", "wk", "wv")
        )
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(K, B * T, -1)
        return _bmm_t(y, self.param(pre + "wo.weight"))

    def _swiglu(self, h: torch.Tensor, pre: str) -> torch.Tensor:
        gate = _bmm_t(h, self.param(pre + "w_gate.weight"))
        up = _bmm_t(h, self.param(pre + "w_up.weight"))
        return _bmm_t(F.silu(gate) * up, self.param(pre + "w_down.weight"))

    def _moe(self, h: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`MoE.forward` per replica on h [K, N, d]: (out, aux [K], stats [K, 3])."""
        cfg, K = self.cfg.moe, self.K
        N, d = h.shape[1], h.shape[2]
        E, k = cfg.num_routed_experts, cfg.active_experts
        pre = f"blocks.{layer}.mlp."
        w_router = self.param(pre + "router.weight")
        with torch.autocast(device_type=h.device.type, enabled=False):
            logits = _bmm_t(h.float(), w_router.float())  # [K, N, E], fp32 as MoE.router_logits
        if cfg.gate == "sigmoid":
            scores = torch.sigmoid(logits)
            bias = getattr(self, f"expert_bias_{layer}")
            top_idx = (scores + bias[:, None, :]).topk(k, dim=-1).indices
            top = scores.gather(-1, top_idx)
            probs = scores / scores.sum(-1, keepdim=True)
        else:
            probs = logits.softmax(-1)
            top, top_idx = probs.topk(k, dim=-1)  # [K, N, k]
        switch = cfg.gate == "switch" and k == 1
        gates = top if switch else keep_grad_normalise(top)
        # Assignments choice-major within each replica, replicas one after another; the expert of
        # replica r is numbered r * E + e, so sorting by it groups by replica, then expert.
        replica = torch.arange(K, device=h.device)
        expert_of = (top_idx.transpose(1, 2).reshape(K, k * N) + (replica * E)[:, None]).reshape(-1)
        token_of = torch.arange(N, device=h.device).repeat(k)[None, :] + (replica * N)[:, None]
        token_of = token_of.reshape(-1)
        gate_of = gates.transpose(1, 2).reshape(-1)
        routed = torch.bincount(expert_of, minlength=K * E)
        training = self.training
        capacity = moe_capacity(cfg, N, k, E, training)
        if capacity < N * k:
            choice_of = (torch.arange(K * k * N, device=h.device) % (k * N)) // N
            confidence = top.detach().transpose(1, 2).reshape(-1)
            order, kept = capacity_order(expert_of, routed, capacity, confidence, choice_of)
        else:
            order = torch.argsort(expert_of, stable=True)
            kept = routed
        if cfg.gate == "sigmoid" and training and torch.is_grad_enabled():
            getattr(self, f"step_load_{layer}").add_(routed.detach().float().view(K, E))
        rows = token_of[order]
        x = h.reshape(K * N, d)
        weights = [
            self.param(pre + w).flatten(0, 1) for w in ("w_gate", "w_up", "w_down")
        ]  # [K * E, in, out]
        hidden = weights[0].shape[-1]
        impl, dtype = self.moe_impl, x.dtype
        if impl == "auto":
            dtype = grouped_mm_dtype(x, d, hidden)
            impl = "loop" if dtype is None else "grouped"
        sent = x[rows]
        if impl == "grouped":
            ys = experts_grouped(sent.to(dtype), kept, *[w.to(dtype) for w in weights])
        else:
            ys = experts_loop(sent, kept.tolist(), *weights)
        ys = ys * gate_of[order].unsqueeze(-1).to(ys.dtype)
        out = torch.zeros_like(x, dtype=ys.dtype).index_add_(0, rows, ys).to(x.dtype)
        out = out.view(K, N, d)
        if cfg.shared_expert:
            out = out + self._swiglu(h, pre + "shared.")
        # Losses and statistics per replica (MoE.losses_and_stats)
        load = routed.view(K, E).float() / (N * k)
        balance = E * (load * probs.mean(1)).sum(-1)
        z_loss = torch.logsumexp(logits, -1).square().mean(-1)
        aux = cfg.aux_loss_weight * balance + cfg.z_loss_weight * z_loss
        entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1).mean(-1)
        dropped = 1 - kept.view(K, E).sum(-1) / (N * k)
        cv = load.std(-1, unbiased=False) / load.mean(-1).clamp_min(1e-12)
        stats = torch.stack([dropped.float(), entropy, cv], dim=-1).detach()
        return out, aux, stats

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> StackedOutput:
        """idx, targets [K, B, T]: each replica's batch. Returns each replica's loss [K]."""
        cfg, K = self.cfg, self.K
        if idx.shape[0] != K:
            raise ValueError(f"idx has {idx.shape[0]} replicas; the model has {K}")
        B, length = idx.shape[1], idx.shape[2]
        if length > cfg.seq_len:
            raise ValueError(f"input length {length} exceeds model.seq_len={cfg.seq_len}")
        T = length
        wte = self.param("wte.weight")  # [K, V, d]
        V = wte.shape[1]
        offsets = (torch.arange(K, device=idx.device) * V).view(K, 1, 1)
        x = F.embedding((idx + offsets).view(K, B * T), wte.reshape(K * V, -1))  # [K, BT, d]
        aux = torch.zeros(K, device=idx.device)
        stats = []
        for layer in range(cfg.n_layer):
            pre = f"blocks.{layer}."
            x = x + self._attention(self._norm(x, pre + "attn_norm.weight"), layer, B, T)
            h = self._norm(x, pre + "mlp_norm.weight")
            if layer in self.moe_layers:
                out, layer_aux, layer_stats = self._moe(h, layer)
                x = x + out
                aux = aux + layer_aux
                stats.append(layer_stats)
            else:
                x = x + self._swiglu(h, pre + "mlp.")
        moe_stats = torch.stack(stats).mean(0) if stats else None
        if targets is None:
            return StackedOutput(None, aux, moe_stats)
        head = wte if cfg.tied_embeddings else self.param("lm_head.weight")
        logits = _bmm_t(self._norm(x, "norm.weight"), head)  # [K, BT, V]
        loss = F.cross_entropy(
            logits.float().view(K * B * T, V), targets.reshape(-1), reduction="none"
        )
        return StackedOutput(loss.view(K, B * T).mean(1), aux, moe_stats)

    @torch.no_grad()
    def update_router_biases(self) -> None:
        """`MoE.update_bias` per replica (sigmoid gate's aux-loss-free balancing; DeepSeek-V3)."""
        if self.cfg.moe is None or self.cfg.moe.gate != "sigmoid":
            return
        for layer in self.moe_layers:
            load = getattr(self, f"step_load_{layer}")
            bias = getattr(self, f"expert_bias_{layer}")
            bias += self.cfg.moe.bias_update_rate * torch.sign(load.mean(-1, keepdim=True) - load)
            load.zero_()


def vmap_losses(
    template: GPT, params: dict[str, torch.Tensor], idx: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """The other candidate: `torch.func.vmap` over `functional_call(template, ...)` with the
    parameters stacked [K, ...] (PyTorch's model-ensembling recipe). Dense models only (MoE
    routing has data-dependent shapes); [K] losses. Kept for the measurement in the module
    docstring and tested equal to `StackedGPT`."""
    from torch.func import functional_call, vmap

    def one(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return functional_call(template, p, (x, y)).loss

    return vmap(one, randomness="error")(params, idx, targets)
