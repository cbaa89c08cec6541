"""The dense MLP every dense layer uses and every MoE expert repeats (core question 3).

SwiGLU (Shazeer 2020, "GLU Variants Improve Transformer"): w_down(silu(w_gate x) * w_up x), no
biases, as in LLaMA (Touvron et al. 2023). It lives with the dense model rather than in the MoE file
because it is the dense model's MLP; `nanigpt.model.moe` uses it for the shared expert and keeps a
re-export. The forward reads its widths from the weights, so tensor parallelism (Megatron-LM,
Shoeybi et al. 2019: w_gate, w_up by columns, w_down by rows) only shards the three weights.
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
