"""The GPT that every run trains: a dense model and its MoE twin differ only in the MLP.

Serves core question 3 (when and why do MoEs win) and the scaling fits: sizes come from a few knobs
(`n_layer`, `d_model`, `n_head`, `mlp_ratio`) so a sweep is one list in the config, and the exact
parameter and FLOP count of any config is in `nanigpt.model.flops`.

Architecture (LLaMA-style, Touvron et al. 2023): pre-norm blocks with RMSNorm (Zhang & Sennrich
2019), rotary position embeddings (Su et al. 2021), causal attention through
`F.scaled_dot_product_attention` (flash kernels on GPU), SwiGLU MLP (Shazeer 2020), no biases,
optionally tied input/output embeddings. Init: normal(0, 0.02), with the two projections that write
into the residual stream (attention `wo`, MLP `w_down`) scaled by 1/sqrt(2 * n_layer) (GPT-2,
Radford et al. 2019) so the residual's variance does not grow with depth.

`kernels` ("torch" or "triton", or a mapping per kernel: rms_norm, rope, swiglu, cross_entropy)
swaps the eager ops for the Triton kernels of `nanigpt.kernels` (core question 6); parameters and
state dicts are the same either way, and tests/test_kernels.py holds the two equal. With the
fused cross-entropy the logits are never built: `ModelOutput.logits` is None when targets are given
and grad mode is on (training); evaluation under no_grad takes the eager loss, one matmul instead
of the fused loss's three (it finishes the gradients in the forward).

Speed options (issue 30, core question 1: where does a step's time go?), each off by default and
held equal to the reference by tests/test_fused_model.py: `fused_projections` (one QKV matmul and
one gate-up matmul, nanoGPT's c_attn and LLaMA's fused w13; the parameters concatenated, see
`fuse_state_dict`), `fusable_rope_norm` (RoPE applied on the projections' [B, T, H, D] layout, so
q, k and the attention output need no transpose copies, and RMSNorm as plain fp32 arithmetic that
Inductor fuses with the residual add and the cast around it), `attention_backend` (SDPA pinned to
one kernel family: torch.nn.attention.sdpa_kernel) and `precision` (torchao's float8 training on
every Linear or on the lm_head: `nanigpt.model.fp8`). Tensor parallelism shards wq, wk, wv and
w_gate, w_up by name, so it takes the unfused model.

The model knows nothing of parallelism: `nanigpt.parallel` applies DDP, FSDP, TP and EP from
outside, through seams (torchtitan's design): attention infers its local head count from its
projections, so TP only shards weights; the MoE's token dispatcher is where EP puts its all-to-all.
Reading order: config, rotary embedding, attention, block, model.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanigpt.model.config import GPTConfig
from nanigpt.model.mlp import GateUpSwiGLU, SwiGLU
from nanigpt.model.moe import MoE


class ModelOutput(NamedTuple):
    logits: torch.Tensor | None  # [batch, time, vocab]; None when the fused cross-entropy ran
    loss: torch.Tensor | None  # mean cross-entropy, nats/token; None without targets
    aux_loss: torch.Tensor  # weighted MoE auxiliary losses summed over MoE layers; 0 for dense
    moe_stats: list[dict[str, Any]]  # one dict per MoE layer ("layer" + MoE.forward's stats)


def rotary_tables(seq_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position * theta_i, theta_i = base^(-2i/head_dim) (RoFormer, Su et al. 2021)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()  # [seq_len, head_dim / 2]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i + d/2}) of x [batch, heads, time, head_dim] (GPT-NeoX layout), cos
    and sin [time, head_dim / 2]; with them as [time, 1, head_dim / 2], x [batch, time, heads,
    head_dim], the projection's own layout (`fusable_rope_norm`: its transpose is then a view)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.to(x.dtype)


class FusableRMSNorm(nn.RMSNorm):
    """`nn.RMSNorm` (same parameter and state dict) written as fp32 arithmetic:
    x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019), which Inductor fuses with the
    residual add before it and autocast's cast after it into one kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)  # fp32, or fp64 in the tests
        xf = x.to(dtype)
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(dtype)).to(x.dtype)


def rms_norm_for(cfg: GPTConfig) -> nn.RMSNorm:
    """`nn.RMSNorm`, its Triton twin or its fusable form (same parameter), as `cfg` says."""
    if cfg.kernel_impls["rms_norm"] == "triton":
        from nanigpt.kernels.rms_norm import TritonRMSNorm

        return TritonRMSNorm(cfg.d_model, eps=cfg.norm_eps)
    if cfg.fusable_rope_norm:
        return FusableRMSNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)


def sdpa_backends(name: str) -> list | None:
    """The SDPBackend list `model.attention_backend` pins (None: SDPA chooses)."""
    if name == "auto":
        return None
    from torch.nn.attention import SDPBackend

    return [
        {
            "flash": SDPBackend.FLASH_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "math": SDPBackend.MATH,
        }[name]
    ]


def causal_attention(q, k, v, backends: list | None) -> torch.Tensor:
    """Causal SDPA of q, k, v [batch, heads, time, head_dim], on `backends` when given."""
    if backends is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(backends):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class CausalSelfAttention(nn.Module):
    """Causal multi-head attention with rotary q and k. The forward takes the head count from the
    projections' width (`-1` heads of `head_dim`, torchtitan's "infer the actual local heads"), so
    tensor parallelism (whole heads per rank: wq, wk, wv by columns, wo by rows) only shards the
    weights and the same forward runs on the local heads."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.head_dim = cfg.head_dim
        self.triton_rope = cfg.kernel_impls["rope"] == "triton"
        self.tokens_first_rope = cfg.fusable_rope_norm
        self.backends = sdpa_backends(cfg.attention_backend)
        self.fused = cfg.fused_projections
        if self.fused:  # [wq; wk; wv] by rows: one matmul
            self.wqkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        else:  # separate q, k, v projections so tensor parallelism can shard each column-wise
            self.wq = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
            self.wk = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
            self.wv = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.wo = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def input_projections(self) -> tuple[torch.Tensor, ...]:
        """The q, k, v projection weights (views into wqkv when fused)."""
        if self.fused:
            return self.wqkv.weight.chunk(3, dim=0)
        return self.wq.weight, self.wk.weight, self.wv.weight

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        # [B, T, heads, head_dim]; heads is -1: n_head, or n_head / tp under tensor parallelism
        if self.fused:
            q, k, v = self.wqkv(x).view(B, T, 3, -1, self.head_dim).unbind(2)
        else:
            q, k, v = (w(x).view(B, T, -1, self.head_dim) for w in (self.wq, self.wk, self.wv))
        if self.tokens_first_rope and not self.triton_rope:
            c, s = cos[:, None], sin[:, None]  # broadcast over [batch, time, heads, head_dim]
            q, k = apply_rotary(q, c, s), apply_rotary(k, c, s)
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        elif self.triton_rope:
            from nanigpt.kernels.rope import rope

            q, k = rope(q, k, cos, sin)  # on [B, T, heads, head_dim], before the transpose
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        else:
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = causal_attention(q, k, v, self.backends)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.attn_norm = rms_norm_for(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.mlp_norm = rms_norm_for(cfg)
        self.is_moe = layer in cfg.moe_layers
        if self.is_moe:
            self.mlp = MoE(cfg.d_model, cfg.mlp_hidden, cfg.moe)
        elif cfg.fused_projections:
            self.mlp = GateUpSwiGLU(cfg.d_model, cfg.mlp_hidden)
        elif cfg.kernel_impls["swiglu"] == "triton":
            from nanigpt.kernels.swiglu import FusedSwiGLU

            self.mlp = FusedSwiGLU(cfg.d_model, cfg.mlp_hidden)
        else:
            self.mlp = SwiGLU(cfg.d_model, cfg.mlp_hidden)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any] | None]:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        if not self.is_moe:
            return x + self.mlp(self.mlp_norm(x)), None, None
        h, aux_loss, stats = self.mlp(self.mlp_norm(x))
        return x + h, aux_loss, {"layer": self.layer, **stats}


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = rms_norm_for(cfg)
        self.fused_loss = cfg.kernel_impls["cross_entropy"] == "triton"
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tied_embeddings:
            self.lm_head.weight = self.wte.weight
        cos, sin = rotary_tables(cfg.seq_len, cfg.head_dim, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()
        if cfg.precision != "bf16":
            from nanigpt.model.fp8 import convert_to_fp8

            convert_to_fp8(self, lm_head_only=cfg.precision == "fp8_lm_head")

    def init_weights(self) -> None:
        std = self.cfg.init_std
        residual_std = std / math.sqrt(2 * self.cfg.n_layer)  # GPT-2 scaled residual init
        nn.init.normal_(self.wte.weight, std=std)
        if not self.cfg.tied_embeddings:
            nn.init.normal_(self.lm_head.weight, std=std)
        self.norm.reset_parameters()
        for block in self.blocks:
            block.attn_norm.reset_parameters()
            block.mlp_norm.reset_parameters()
            for w in block.attn.input_projections():
                nn.init.normal_(w, std=std)
            nn.init.normal_(block.attn.wo.weight, std=residual_std)
            if block.is_moe:
                block.mlp.init_weights(std, residual_std)
            elif isinstance(block.mlp, GateUpSwiGLU):
                for w in block.mlp.w_gate_up.weight.chunk(2, dim=0):
                    nn.init.normal_(w, std=std)
                nn.init.normal_(block.mlp.w_down.weight, std=residual_std)
            else:
                nn.init.normal_(block.mlp.w_gate.weight, std=std)
                nn.init.normal_(block.mlp.w_up.weight, std=std)
                nn.init.normal_(block.mlp.w_down.weight, std=residual_std)

    def set_moe_impl(self, impl: str) -> None:
        """Choose the expert kernel of every MoE layer: "auto", "grouped" or "loop"."""
        for block in self.blocks:
            if block.is_moe:
                block.mlp.impl = impl

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        length = idx.shape[1]
        if length > self.cfg.seq_len:
            raise ValueError(f"input length {length} exceeds model.seq_len={self.cfg.seq_len}")
        cos, sin = self.rope_cos[:length], self.rope_sin[:length]
        x = self.wte(idx)
        aux_loss = torch.zeros((), device=idx.device)
        moe_stats = []
        for block in self.blocks:
            x, block_aux, stats = block(x, cos, sin)
            if block_aux is not None:
                aux_loss = aux_loss + block_aux
                moe_stats.append(stats)
        if targets is not None and self.fused_loss and torch.is_grad_enabled():
            loss = self._fused_loss(self.norm(x), targets)
            return ModelOutput(None, loss, aux_loss, moe_stats)
        logits = self.lm_head(self.norm(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return ModelOutput(logits, loss, aux_loss, moe_stats)

    def _fused_loss(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The chunked linear + cross-entropy; its matmuls in the autocast dtype when autocast is on."""
        from nanigpt.kernels.cross_entropy import linear_cross_entropy

        device_type = h.device.type
        dtype = None
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
        return linear_cross_entropy(
            h.reshape(-1, h.size(-1)), self.lm_head.weight, targets.reshape(-1), dtype
        )


# Fused parameter name -> (its unfused parts, stacked by rows in this order).
FUSED_PARTS = {
    "attn.wqkv": ("attn.wq", "attn.wk", "attn.wv"),
    "mlp.w_gate_up": ("mlp.w_gate", "mlp.w_up"),
}


def fuse_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An unfused model's state dict in the names of `fused_projections=True` (rows concatenated:
    wqkv = [wq; wk; wv], w_gate_up = [w_gate; w_up]); other entries unchanged."""
    out = dict(state)
    for key in list(state):
        for fused, parts in FUSED_PARTS.items():
            if key.endswith(f".{parts[0]}.weight"):
                prefix = key[: -len(f"{parts[0]}.weight")]
                names = [f"{prefix}{p}.weight" for p in parts]
                if all(n in state for n in names):
                    out[f"{prefix}{fused}.weight"] = torch.cat([state[n] for n in names], dim=0)
                    for n in names:
                        del out[n]
    return out


def unfuse_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `fuse_state_dict`: a fused model's weights under the reference names."""
    out = dict(state)
    for key in list(state):
        for fused, parts in FUSED_PARTS.items():
            if key.endswith(f".{fused}.weight"):
                prefix = key[: -len(f"{fused}.weight")]
                del out[key]
                for p, w in zip(parts, state[key].chunk(len(parts), dim=0), strict=True):
                    out[f"{prefix}{p}.weight"] = w.clone()
    return out
