"""RMSNorm forward and backward in Triton, beside its PyTorch reference (core question 6).

RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean(x^2) + eps) * w, over the last dim.
Backward, with r = rsqrt(mean(x^2) + eps), x_hat = x * r and g = dy * w:
    dx = r * (g - x_hat * mean(g * x_hat)),   dw = sum over rows of dy * x_hat.
The forward reads x once and writes y once (and a float32 r per row, saved for the backward); the
backward reads x, dy, w and r, writes dx, and each program of a persistent grid sums dw over its
rows into one float32 partial row, which a small torch sum then reduces (Liger-Kernel, Hsu et al.
2024, arXiv 2410.10989, does the same). Arithmetic is float32 whatever the input dtype; outputs
come back in the input's dtype. A row that fits one block (power-of-two BLOCK over the row, the
tail masked) is handled a tile of rows at a time: the forward, one program per [ROWS, BLOCK] tile
of about FWD_TILE elements (enough bytes in flight per SM for short rows such as d = 768, as in
the Triton tutorial's layer norm); the backward, a persistent grid (BWD_PROGRAMS_PER_SM per SM),
each program looping over its rows in tiles of about BWD_TILE elements, loading the next tile
before computing this one, dw summed in registers. Rows longer than one block loop over blocks
(two passes). Addresses: a 64-bit tile base plus 32-bit offsets inside the tile. `launch_config`
overrides the tiles, warps and programs per SM; the bench times a few at 131072 x 1024.

The reference `rms_norm_reference` computes in float32 like `torch.nn.RMSNorm` does under autocast.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from nanigpt.kernels._launch import (
    MAX_BLOCK,
    block_for,
    contiguous,
    fake_for,
    kernel_op,
    launch,
    program_count,
    warps_for,
)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return y.to(x.dtype)


FWD_TILE = 8192  # elements of x one forward program normalises at once (whole rows)
BWD_TILE = 4096  # elements of x (and dy) one backward program handles per loop step
FWD_WARPS, BWD_WARPS = 8, 8
BWD_PROGRAMS_PER_SM = 4


def rows_for(block: int, tile: int = FWD_TILE) -> int:
    """Rows one program handles at once when a row fits one block (about `tile` elements)."""
    return max(1, min(16, tile // block))


@triton.jit
def _rms_norm_fwd_kernel(
    x_ptr, w_ptr, y_ptr, rstd_ptr, n_rows, n_cols, eps, BLOCK: tl.constexpr,
    ONE_BLOCK: tl.constexpr, ROWS: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    if ONE_BLOCK:  # ROWS whole rows as one [ROWS, BLOCK] tile
        first = pid * ROWS  # 64-bit base, 32-bit offsets inside the tile
        local = tl.arange(0, ROWS)
        row_mask = first + local < n_rows
        mask = row_mask[:, None] & (cols[None, :] < n_cols)
        offsets = local[:, None] * n_cols + cols[None, :]
        x = tl.load(x_ptr + first * n_cols + offsets, mask=mask, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / n_cols + eps)
        w = tl.load(w_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
        y = x * rstd[:, None] * w[None, :]
        tl.store(y_ptr + first * n_cols + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)
        tl.store(rstd_ptr + first + local, rstd, mask=row_mask)
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
        local = tl.arange(0, ROWS)
        offsets = local[:, None] * n_cols + cols[None, :]  # 32-bit, inside one tile
        dw = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
        # Software prefetch: the next tile's loads are issued before this tile's arithmetic, so a
        # program keeps one tile of x and dy in flight while it computes (no async copies needed).
        row_mask = first + local < last
        mask = row_mask[:, None] & col_mask[None, :]
        x = tl.load(x_ptr + first * n_cols + offsets, mask=mask, other=0.0)
        dy = tl.load(dy_ptr + first * n_cols + offsets, mask=mask, other=0.0)
        rstd = tl.load(rstd_ptr + first + local, mask=row_mask, other=0.0)
        for start in range(first, last, ROWS):
            following = start + ROWS
            next_row_mask = following + local < last
            next_mask = next_row_mask[:, None] & col_mask[None, :]
            x_next = tl.load(x_ptr + following * n_cols + offsets, mask=next_mask, other=0.0)
            dy_next = tl.load(dy_ptr + following * n_cols + offsets, mask=next_mask, other=0.0)
            rstd_next = tl.load(rstd_ptr + following + local, mask=next_row_mask, other=0.0)
            x_hat = x.to(tl.float32) * rstd[:, None]
            dyf = dy.to(tl.float32)
            g = dyf * w[None, :]
            mean_dot = tl.sum(g * x_hat, axis=1) / n_cols
            dx = rstd[:, None] * (g - x_hat * mean_dot[:, None])
            tl.store(dx_ptr + start * n_cols + offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            dw += dyf * x_hat
            x, dy, rstd, mask = x_next, dy_next, rstd_next, next_mask
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


@kernel_op("nanigpt::rms_norm_fwd")
def rms_norm_fwd(
    x: torch.Tensor, weight: torch.Tensor, eps: float, max_block: int, tile: int, warps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """y [rows, cols] in x's dtype and rstd [rows] float32, for a 2-D x."""
    x, weight = contiguous(x), contiguous(weight)  # no-ops, unless a compiler changed strides
    n_rows, n_cols = x.shape
    y = torch.empty_like(x)
    rstd = torch.empty(n_rows, device=x.device, dtype=torch.float32)
    block = block_for(n_cols, max_block)
    one_block = block >= n_cols
    rows = rows_for(block, tile) if one_block else 1
    launch(_rms_norm_fwd_kernel)[(triton.cdiv(n_rows, rows),)](
        x, weight, y, rstd, n_rows, n_cols, eps, BLOCK=block, ONE_BLOCK=one_block, ROWS=rows,
        num_warps=warps if one_block else warps_for(block),
    )  # fmt: skip
    return y, rstd


@fake_for(rms_norm_fwd)
def _(x, weight, eps, max_block, tile, warps):
    return x.new_empty(x.shape), x.new_empty(x.shape[0], dtype=torch.float32)


@kernel_op("nanigpt::rms_norm_bwd")
def rms_norm_bwd(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, max_block: int,
    tile: int, warps: int, per_sm: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """dx in x's dtype and dw in weight's dtype."""
    dy, x, weight, rstd = contiguous(dy), contiguous(x), contiguous(weight), contiguous(rstd)
    n_rows, n_cols = x.shape
    dx = torch.empty_like(x)
    block = block_for(n_cols, max_block)
    one_block = block >= n_cols
    rows = rows_for(block, tile) if one_block else 1
    programs = program_count(x.device, n_rows, per_sm)
    rows_per_program = triton.cdiv(triton.cdiv(n_rows, programs), rows) * rows
    programs = triton.cdiv(n_rows, rows_per_program)
    dw_partial = torch.empty(programs, n_cols, device=x.device, dtype=torch.float32)
    launch(_rms_norm_bwd_kernel)[(programs,)](
        dy, x, weight, rstd, dx, dw_partial, n_rows, n_cols, rows_per_program,
        BLOCK=block, ONE_BLOCK=one_block, ROWS=rows,
        num_warps=warps if one_block else warps_for(block),
    )  # fmt: skip
    return dx, dw_partial.sum(0).to(weight.dtype)


@fake_for(rms_norm_bwd)
def _(dy, x, weight, rstd, max_block, tile, warps, per_sm):
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, max_block, launch_config):
        shape = x.shape
        x2 = contiguous(x.reshape(-1, shape[-1]))
        fwd_tile, fwd_warps = launch_config[:2]
        y, rstd = rms_norm_fwd(x2, contiguous(weight), eps, max_block, fwd_tile, fwd_warps)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.max_block, ctx.launch_config = max_block, launch_config
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        dy2 = contiguous(dy.reshape(x2.shape))
        bwd_tile, bwd_warps, per_sm = ctx.launch_config[2:]
        dx, dw = rms_norm_bwd(
            dy2, x2, contiguous(weight), rstd, ctx.max_block, bwd_tile, bwd_warps, per_sm
        )
        return dx.view(dy.shape), dw, None, None, None


LAUNCH_CONFIG = (FWD_TILE, FWD_WARPS, BWD_TILE, BWD_WARPS, BWD_PROGRAMS_PER_SM)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    max_block: int = MAX_BLOCK,
    launch_config: tuple[int, int, int, int, int] = LAUNCH_CONFIG,
) -> torch.Tensor:
    """RMSNorm over the last dim of x (any leading shape, any strides), Triton forward and backward.

    `launch_config` = (forward tile elements, forward warps, backward tile elements, backward
    warps, backward programs per SM), for rows that fit one block; the bench sweeps a few.
    """
    return RMSNormFunction.apply(x, weight, eps, max_block, tuple(launch_config))


class TritonRMSNorm(torch.nn.RMSNorm):
    """`torch.nn.RMSNorm` (same parameter, same state dict) whose forward is the Triton kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        return rms_norm(x, self.weight, eps)
