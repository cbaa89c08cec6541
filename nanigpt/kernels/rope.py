"""Rotary position embeddings on q and k in one Triton launch, forward and backward (core question 6).

RoPE (Su et al. 2021, RoFormer), GPT-NeoX layout as in `nanigpt.model.gpt.apply_rotary`: the pairs
(x_i, x_{i + d/2}) of each head are rotated by the angle t * theta_i of the token's position t:
    y1 = x1 cos - x2 sin,   y2 = x1 sin + x2 cos.
The rotation is orthogonal, so the backward is the rotation by -t * theta_i (sin negated): the same
kernel with a sign flag. One program handles one token: all heads of q and of k, with cos and sin
of its position loaded once. Inputs are [batch, time, heads, head_dim] (the layout of the q, k
projections before the transpose to heads-first), computed in float32, written in their dtype;
the output is a new tensor (one read, one write of each of q and k, like an in-place update; an
out-of-place op keeps autograd and torch.compile simple).
Liger-Kernel (Hsu et al. 2024, arXiv 2410.10989) fuses q and k the same way.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from nanigpt.kernels._launch import contiguous, fake_for, kernel_op, launch


def rope_reference(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k [batch, time, heads, head_dim]; cos, sin [time, head_dim / 2] (float32)."""
    c, s = cos[:, None, :], sin[:, None, :]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).to(x.dtype)

    return rotate(q), rotate(k)


@triton.jit
def _rotate_heads(x_ptr, y_ptr, base, cos, sin, heads, half, HEADS: tl.constexpr,
                  HALF: tl.constexpr):  # fmt: skip
    h = tl.arange(0, HEADS)[:, None]
    j = tl.arange(0, HALF)[None, :]
    mask = (h < heads) & (j < half)
    first = base + h * (2 * half) + j
    x1 = tl.load(x_ptr + first, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + first + half, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + first, (x1 * cos - x2 * sin).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(y_ptr + first + half, (x1 * sin + x2 * cos).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kernel(
    q_ptr, k_ptr, q_out_ptr, k_out_ptr, cos_ptr, sin_ptr, seq_len, q_heads, k_heads, half,
    SIGN: tl.constexpr, Q_HEADS: tl.constexpr, K_HEADS: tl.constexpr, HALF: tl.constexpr,
):  # fmt: skip
    token = tl.program_id(0).to(tl.int64)  # batch * seq_len + t
    position = token % seq_len
    j = tl.arange(0, HALF)
    cos = tl.load(cos_ptr + position * half + j, mask=j < half, other=0.0)[None, :]
    sin = SIGN * tl.load(sin_ptr + position * half + j, mask=j < half, other=0.0)[None, :]
    _rotate_heads(q_ptr, q_out_ptr, token * q_heads * 2 * half, cos, sin, q_heads, half,
                  Q_HEADS, HALF)  # fmt: skip
    _rotate_heads(k_ptr, k_out_ptr, token * k_heads * 2 * half, cos, sin, k_heads, half,
                  K_HEADS, HALF)  # fmt: skip


def _rotate(q, k, cos, sin, sign: int):
    batch, seq_len, q_heads, head_dim = q.shape
    k_heads = k.shape[2]
    half = head_dim // 2
    q_out, k_out = torch.empty_like(q), torch.empty_like(k)
    heads = triton.next_power_of_2(max(q_heads, k_heads))
    launch(_rope_kernel)[(batch * seq_len,)](
        q, k, q_out, k_out, cos, sin, seq_len, q_heads, k_heads, half, SIGN=sign,
        Q_HEADS=triton.next_power_of_2(q_heads), K_HEADS=triton.next_power_of_2(k_heads),
        HALF=triton.next_power_of_2(half), num_warps=4 if heads * half <= 1024 else 8,
    )  # fmt: skip
    return q_out, k_out


@kernel_op("nanigpt::rope")
def rope_op(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q, k [batch, time, heads, head_dim] by +angle (sign 1) or -angle (-1)."""
    q, k, cos, sin = contiguous(q), contiguous(k), contiguous(cos), contiguous(sin)
    return _rotate(q, k, cos, sin, sign)


@fake_for(rope_op)
def _(q, k, cos, sin, sign):
    return q.new_empty(q.shape), k.new_empty(k.shape)


class RoPEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin):
        cos, sin = contiguous(cos.float()), contiguous(sin.float())
        ctx.save_for_backward(cos, sin)
        return rope_op(contiguous(q), contiguous(k), cos, sin, 1)

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin = ctx.saved_tensors
        dq, dk = rope_op(contiguous(dq), contiguous(dk), cos, sin, -1)
        return dq, dk, None, None


def rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton RoPE of q, k [batch, time, heads, head_dim] with cos, sin [time, head_dim / 2]."""
    if q.shape[-1] % 2 or q.shape[:2] != k.shape[:2] or cos.shape[0] != q.shape[1]:
        raise ValueError(
            f"rope: q {tuple(q.shape)}, k {tuple(k.shape)}, cos {tuple(cos.shape)}: expected "
            f"[batch, time, heads, even head_dim] and cos, sin [time, head_dim / 2]"
        )
    return RoPEFunction.apply(q, k, cos, sin)
