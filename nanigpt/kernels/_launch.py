"""Launch settings shared by the kernels: block sizes, warps, how many programs a GPU runs at once.

Serves core question 6 (kernel development): one place that says how a row is split into blocks.
The warp heuristic follows the usual Triton practice (also Liger-Kernel's `calculate_settings`):
more warps for longer blocks, so each thread holds a few elements.

`kernel_op` / `launch` / `fake_for` say how a kernel becomes an op of the model. On a GPU the op
is a `torch.library.triton_op` and its kernel launches go through `torch.library.wrap_triton`:
Inductor traces the op's body and calls the Triton kernel from its generated code, with no Python
dispatch per call (the host cost a `custom_op` pays every call; PyTorch's "user-defined Triton
kernels" tutorial). In the interpreter (CPU) `wrap_triton` cannot trace an interpreted kernel, so
the op is a plain `torch.library.custom_op` with a registered fake; both run the same body.
`NANIGPT_TRITON_OP=0` forces the custom_op form on a GPU too (a way back if triton_op misbehaves).
"""

from __future__ import annotations

import functools
import os

import torch
import triton

from nanigpt.kernels import interpreted

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


@functools.cache
def sm_count(device_type: str, index: int | None) -> int:
    """Streaming multiprocessors of a CUDA device (queried once per device), 1 elsewhere."""
    if device_type != "cuda":
        return 1
    index = torch.cuda.current_device() if index is None else index
    return torch.cuda.get_device_properties(index).multi_processor_count


def program_count(device: torch.device, n_rows: int, per_sm: int = 8) -> int:
    """Programs of a persistent kernel: `per_sm` per SM on a GPU, 4 in the interpreter; <= n_rows."""
    programs = per_sm * sm_count(device.type, device.index) if device.type == "cuda" else 4
    return max(1, min(programs, n_rows))


def contiguous(t: torch.Tensor) -> torch.Tensor:
    """t itself when already contiguous (no call into the dispatcher), else a contiguous copy."""
    return t if t.is_contiguous() else t.contiguous()


def use_triton_op() -> bool:
    """True when ops are `triton_op`s (a GPU, unless NANIGPT_TRITON_OP=0), else `custom_op`s."""
    return not interpreted() and os.environ.get("NANIGPT_TRITON_OP", "1") != "0"


def kernel_op(name: str):
    """Decorator defining the op `name` (no mutated arguments): triton_op or custom_op, see above."""
    if use_triton_op():
        return torch.library.triton_op(name, mutates_args=())
    return torch.library.custom_op(name, mutates_args=())


def launch(kernel):
    """The kernel as the op's body must launch it: through wrap_triton inside a triton_op."""
    return torch.library.wrap_triton(kernel) if use_triton_op() else kernel


def fake_for(op):
    """`op.register_fake` for a custom_op; a triton_op traces its own body, so then a no-op."""
    if use_triton_op():
        return lambda fn: fn
    return op.register_fake
