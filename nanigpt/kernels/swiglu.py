"""The SwiGLU activation silu(gate) * up fused in Triton, forward and backward (core question 6).

SwiGLU (Shazeer 2020, "GLU Variants Improve Transformer"): h = silu(g) * u, silu(g) = g sigmoid(g).
With s = sigmoid(g), the backward is
    du = dh * silu(g),   dg = dh * u * s * (1 + g (1 - s)).
Eager PyTorch runs silu, the product and their backwards as separate kernels, each a pass over
memory; fused, the forward reads g and u once and writes h once, and the backward reads dh, g, u
once and writes dg and du once, recomputing s instead of saving it (Liger-Kernel, Hsu et al. 2024,
arXiv 2410.10989, does the same). Float32 arithmetic, outputs in the input dtype.

`FusedSwiGLU` is the dense MLP of `nanigpt.model.mlp.SwiGLU` (same parameters and state dict) with
the activation replaced by the fused kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from nanigpt.kernels._launch import contiguous, fake_for, kernel_op, launch
from nanigpt.model.mlp import SwiGLU

BLOCK = 1024


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return (F.silu(gate.float()) * up.float()).to(gate.dtype)


@triton.jit
def _swiglu_fwd_kernel(g_ptr, u_ptr, h_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    g = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    h = g * tl.sigmoid(g) * u
    tl.store(h_ptr + offsets, h.to(h_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd_kernel(dh_ptr, g_ptr, u_ptr, dg_ptr, du_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    dh = tl.load(dh_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    silu = g * s
    tl.store(du_ptr + offsets, (dh * silu).to(du_ptr.dtype.element_ty), mask=mask)
    dg = dh * u * s * (1.0 + g * (1.0 - s))
    tl.store(dg_ptr + offsets, dg.to(dg_ptr.dtype.element_ty), mask=mask)


@kernel_op("nanigpt::swiglu_fwd")
def swiglu_fwd(gate: torch.Tensor, up: torch.Tensor, block: int) -> torch.Tensor:
    gate, up = contiguous(gate), contiguous(up)  # no-ops, unless a compiler changed strides
    h = torch.empty_like(gate)
    n = gate.numel()
    launch(_swiglu_fwd_kernel)[(triton.cdiv(n, block),)](gate, up, h, n, BLOCK=block, num_warps=4)
    return h


@fake_for(swiglu_fwd)
def _(gate, up, block):
    return gate.new_empty(gate.shape)


@kernel_op("nanigpt::swiglu_bwd")
def swiglu_bwd(
    dh: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, block: int
) -> tuple[torch.Tensor, torch.Tensor]:
    dh, gate, up = contiguous(dh), contiguous(gate), contiguous(up)
    dg, du = torch.empty_like(gate), torch.empty_like(up)
    n = gate.numel()
    launch(_swiglu_bwd_kernel)[(triton.cdiv(n, block),)](
        dh, gate, up, dg, du, n, BLOCK=block, num_warps=4
    )
    return dg, du


@fake_for(swiglu_bwd)
def _(dh, gate, up, block):
    return gate.new_empty(gate.shape), up.new_empty(up.shape)


class SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up, block):
        gate, up = contiguous(gate), contiguous(up)
        ctx.save_for_backward(gate, up)
        ctx.block = block
        return swiglu_fwd(gate, up, block)

    @staticmethod
    def backward(ctx, dh):
        gate, up = ctx.saved_tensors
        dg, du = swiglu_bwd(contiguous(dh), gate, up, ctx.block)
        return dg, du, None


def swiglu(gate: torch.Tensor, up: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """silu(gate) * up, Triton forward and backward; gate and up of one shape and dtype."""
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(
            f"swiglu: gate {tuple(gate.shape)} {gate.dtype} and up {tuple(up.shape)} {up.dtype}: "
            f"expected one shape and dtype"
        )
    return SwiGLUFunction.apply(gate, up, block)


class FusedSwiGLU(SwiGLU):
    """`nanigpt.model.mlp.SwiGLU` with silu(gate) * up computed by the fused Triton kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(swiglu(self.w_gate(x), self.w_up(x)))
