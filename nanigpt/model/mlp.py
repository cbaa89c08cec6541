"""The dense MLP every dense layer uses and every MoE expert repeats (core question 3).

SwiGLU (Shazeer 2020, "GLU Variants Improve Transformer"): w_down(silu(w_gate x) * w_up x), no
biases, as in LLaMA (Touvron et al. 2023). It lives with the dense model rather than in the MoE file
because it is the dense model's MLP; `nanigpt.model.moe` uses it for the shared expert and keeps a
re-export. The forward reads its widths from the weights, so tensor parallelism (Megatron-LM,
Shoeybi et al. 2019: w_gate, w_up by columns, w_down by rows) only shards the three weights.

`GateUpSwiGLU` (issue 30, core question 1) is the same function with w_gate and w_up stacked into
one [2 hidden, d_model] weight, so the step launches one input matmul instead of two (nanoGPT's
MLP launches one too); silu(gate) * up then reads the two halves of one output, which Inductor
fuses into a single pointwise kernel. `nanigpt.model.gpt.fuse_state_dict` maps a SwiGLU's weights
onto it (gate rows first), and tests/test_fused_model.py holds the two equal.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SwiGLU(nn.Module):
    """The dense MLP (Shazeer 2020): w_down(silu(w_gate x) * w_up x), no biases."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.w_gate = nn.Linear(d_model, hidden, bias=False)
        self.w_up = nn.Linear(d_model, hidden, bias=False)
        self.w_down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class GateUpSwiGLU(nn.Module):
    """SwiGLU with one gate-up matmul: w_gate_up = [w_gate; w_up] (rows), then silu(g) * u (one
    pointwise kernel under Inductor; the config refuses the Triton SwiGLU with it)."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.w_gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.w_down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w_gate_up(x).chunk(2, dim=-1)
        return self.w_down(F.silu(gate) * up)
