"""RMSNorm forward and backward in Triton, beside its PyTorch reference (core question 6).

RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean(x^2) + eps) * w, over the last dim.
Backward, with r = rsqrt(mean(x^2) + eps), x_hat = x * r and g = dy * w:
    dx = r * (g - x_hat * mean(g * x_hat)),   dw = sum over rows of dy * x_hat.
The forward reads x once and writes y once (and a float32 r per row, saved for the backward); the
backward reads x, dy, w and r, writes dx, and each program of a persistent grid sums dw over its
rows into one float32 partial row, which a small torch sum then reduces (Liger-Kernel, Hsu et al.
2024, arXiv 2410.10989, does the same). Arithmetic is float32 whatever the input dtype; outputs
come back in the input's dtype. A row that fits one block is handled a few rows per program (one
[rows, block] tile of about 4096 elements, so short rows such as d = 768 still give each program
enough bytes in flight); rows longer than one block loop over blocks (two passes).

The reference `rms_norm_reference` computes in float32 like `torch.nn.RMSNorm` does under autocast.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from nanigpt.kernels._launch import MAX_BLOCK, block_for, program_count, warps_for


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return y.to(x.dtype)


def rows_for(block: int) -> int:
    """Rows one program normalises at once when a row fits one block (about 4096 elements)."""
    return max(1, min(16, 4096 // block))


@triton.jit
def _rms_norm_fwd_kernel(
    x_ptr, w_ptr, y_ptr, rstd_ptr, n_rows, n_cols, eps, BLOCK: tl.constexpr,
    ONE_BLOCK: tl.constexpr, ROWS: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    if ONE_BLOCK:  # ROWS whole rows as one [ROWS, BLOCK] tile
        rows = pid * ROWS + tl.arange(0, ROWS)
        row_mask = rows < n_rows
        mask = row_mask[:, None] & (cols[None, :] < n_cols)
        offsets = rows[:, None] * n_cols + cols[None, :]
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / n_cols + eps)
        w = tl.load(w_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
        y = x * rstd[:, None] * w[None, :]
        tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)
        tl.store(rstd_ptr + rows, rstd, mask=row_mask)
    else:  # one long row, two passes over its blocks
        row = pid
        x_row = x_ptr + row * n_cols
        y_row = y_ptr + row * n_cols
        sum_sq = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, n_cols, BLOCK):
            mask = start + cols < n_cols
            x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(tl.float32)
            sum_sq += x * x
        rstd = 1.0 / tl.sqrt(tl.sum(sum_sq, axis=0) / n_cols + eps)
        for start in range(0, n_cols, BLOCK):
            mask = start + cols < n_cols
            x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + start + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(y_row + start + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)
        tl.store(rstd_ptr + row, rstd)


@triton.jit
def _rms_norm_bwd_kernel(
    dy_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, dw_partial_ptr, n_rows, n_cols, rows_per_program,
    BLOCK: tl.constexpr, ONE_BLOCK: tl.constexpr, ROWS: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    first = pid.to(tl.int64) * rows_per_program
    last = tl.minimum(first + rows_per_program, n_rows)
    cols = tl.arange(0, BLOCK)
    dw_row = dw_partial_ptr + pid.to(tl.int64) * n_cols
    if ONE_BLOCK:  # ROWS whole rows per iteration, dw summed in registers
        col_mask = cols < n_cols
        w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        dw = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
        for start in range(first, last, ROWS):
            rows = start + tl.arange(0, ROWS)
            row_mask = rows < last
            mask = row_mask[:, None] & col_mask[None, :]
            offsets = rows[:, None] * n_cols + cols[None, :]
            x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)
            x_hat = x * rstd[:, None]
            g = dy * w[None, :]
            mean_dot = tl.sum(g * x_hat, axis=1) / n_cols
            dx = rstd[:, None] * (g - x_hat * mean_dot[:, None])
            tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            dw += dy * x_hat
        tl.store(dw_row + cols, tl.sum(dw, axis=0), mask=col_mask)
    else:
        for start in range(0, n_cols, BLOCK):
            tl.store(dw_row + start + cols, tl.zeros([BLOCK], dtype=tl.float32),
                     mask=start + cols < n_cols)  # fmt: skip
        for row in range(first, last):
            offset = row * n_cols
            rstd = tl.load(rstd_ptr + row)
            dot = tl.zeros([BLOCK], dtype=tl.float32)
            for start in range(0, n_cols, BLOCK):
                mask = start + cols < n_cols
                x = tl.load(x_ptr + offset + start + cols, mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(dy_ptr + offset + start + cols, mask=mask, other=0.0).to(tl.float32)
                w = tl.load(w_ptr + start + cols, mask=mask, other=0.0).to(tl.float32)
                dot += dy * w * x * rstd
            mean_dot = tl.sum(dot, axis=0) / n_cols
            for start in range(0, n_cols, BLOCK):
                mask = start + cols < n_cols
                x = tl.load(x_ptr + offset + start + cols, mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(dy_ptr + offset + start + cols, mask=mask, other=0.0).to(tl.float32)
                w = tl.load(w_ptr + start + cols, mask=mask, other=0.0).to(tl.float32)
                x_hat = x * rstd
                dx = rstd * (dy * w - x_hat * mean_dot)
                tl.store(dx_ptr + offset + start + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
                partial = tl.load(dw_row + start + cols, mask=mask, other=0.0)
                tl.store(dw_row + start + cols, partial + dy * x_hat, mask=mask)


@torch.library.custom_op("nanigpt::rms_norm_fwd", mutates_args=())
def rms_norm_fwd(
    x: torch.Tensor, weight: torch.Tensor, eps: float, max_block: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """y [rows, cols] in x's dtype and rstd [rows] float32, for a 2-D x."""
    x, weight = x.contiguous(), weight.contiguous()  # no-ops, unless a compiler changed strides
    n_rows, n_cols = x.shape
    y = torch.empty_like(x)
    rstd = torch.empty(n_rows, device=x.device, dtype=torch.float32)
    block = block_for(n_cols, max_block)
    one_block = block >= n_cols
    rows = rows_for(block) if one_block else 1
    _rms_norm_fwd_kernel[(triton.cdiv(n_rows, rows),)](
        x, weight, y, rstd, n_rows, n_cols, eps, BLOCK=block, ONE_BLOCK=one_block, ROWS=rows,
        num_warps=warps_for(rows * block),
    )  # fmt: skip
    return y, rstd


@rms_norm_fwd.register_fake
def _(x, weight, eps, max_block):
    return x.new_empty(x.shape), x.new_empty(x.shape[0], dtype=torch.float32)


@torch.library.custom_op("nanigpt::rms_norm_bwd", mutates_args=())
def rms_norm_bwd(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, max_block: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """dx in x's dtype and dw in weight's dtype."""
    dy, x, weight, rstd = dy.contiguous(), x.contiguous(), weight.contiguous(), rstd.contiguous()
    n_rows, n_cols = x.shape
    dx = torch.empty_like(x)
    block = block_for(n_cols, max_block)
    one_block = block >= n_cols
    rows = rows_for(block) if one_block else 1
    programs = program_count(x.device, n_rows)
    rows_per_program = triton.cdiv(triton.cdiv(n_rows, programs), rows) * rows
    programs = triton.cdiv(n_rows, rows_per_program)
    dw_partial = torch.empty(programs, n_cols, device=x.device, dtype=torch.float32)
    _rms_norm_bwd_kernel[(programs,)](
        dy, x, weight, rstd, dx, dw_partial, n_rows, n_cols, rows_per_program,
        BLOCK=block, ONE_BLOCK=one_block, ROWS=rows, num_warps=warps_for(rows * block),
    )  # fmt: skip
    return dx, dw_partial.sum(0).to(weight.dtype)


@rms_norm_bwd.register_fake
def _(dy, x, weight, rstd, max_block):
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, max_block):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        y, rstd = rms_norm_fwd(x2, weight.contiguous(), eps, max_block)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.max_block = max_block
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        dy2 = dy.reshape(x2.shape).contiguous()
        dx, dw = rms_norm_bwd(dy2, x2, weight.contiguous(), rstd, ctx.max_block)
        return dx.view(dy.shape), dw, None, None


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, max_block: int = MAX_BLOCK
) -> torch.Tensor:
    """RMSNorm over the last dim of x (any leading shape, any strides), Triton forward and backward."""
    return RMSNormFunction.apply(x, weight, eps, max_block)


class TritonRMSNorm(torch.nn.RMSNorm):
    """`torch.nn.RMSNorm` (same parameter, same state dict) whose forward is the Triton kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        return rms_norm(x, self.weight, eps)
