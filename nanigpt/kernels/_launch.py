"""Launch settings shared by the kernels: block sizes, warps, how many programs a GPU runs at once.

Serves core question 6 (kernel development): one place that says how a row is split into blocks.
The warp heuristic follows the usual Triton practice (also Liger-Kernel's `calculate_settings`):
more warps for longer blocks, so each thread holds a few elements.
"""

from __future__ import annotations

import torch
import triton

MAX_BLOCK = 8192  # the longest row block a program loads at once; longer rows loop over blocks


def block_for(n: int, max_block: int = MAX_BLOCK) -> int:
    """Power-of-two block covering a row of `n` elements, at most `max_block` (then it loops)."""
    return min(triton.next_power_of_2(max(n, 1)), triton.next_power_of_2(max_block))


def warps_for(block: int) -> int:
    if block >= 32768:
        return 32
    if block >= 8192:
        return 16
    if block >= 2048:
        return 8
    return 4


def program_count(device: torch.device, n_rows: int) -> int:
    """Programs of a persistent kernel: 8 per SM on a GPU, 4 in the interpreter; <= n_rows."""
    if device.type == "cuda":
        programs = 8 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        programs = 4
    return max(1, min(programs, n_rows))
