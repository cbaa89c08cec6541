"""Triton kernels for the step's memory-bound work, each beside its PyTorch reference (core question 6).

Which kernels and why: the profiler put norm/elementwise kernels at 30% of a GPT-2 124M step on an
H100 and traced the gap to nanoGPT to SwiGLU's elementwise work, RMSNorm, RoPE and an fp32
log-softmax over the vocabulary. One module per kernel, each with its readable PyTorch reference, a
`torch.autograd.Function` and the Triton kernels it launches:
- `rms_norm`: RMSNorm (Zhang & Sennrich 2019) forward and backward, weight gradient reduced from
  per-program partial sums;
- `rope`: rotary embeddings (Su et al. 2021, RoFormer) on q and k in one launch, forward and backward;
- `swiglu`: silu(gate) * up (Shazeer 2020, GLU variants) forward and backward fused;
- `cross_entropy`: the output projection and the cross-entropy in token chunks, gradients computed in
  the forward (Liger-Kernel, Hsu et al. 2024, arXiv 2410.10989; cut cross-entropy, Wijmans et al.
  2024, arXiv 2411.09009), so the [tokens x vocab] logits never exist in full.

On a GPU the RMSNorm, RoPE and SwiGLU launches are `torch.library.triton_op`s (kernels launched
through `wrap_triton`), so `torch.compile` traces into them and Inductor calls the Triton kernels
from its generated code, without a Python dispatch per call; in the interpreter, and for the fused
cross-entropy (one call per step, matmuls inside), they are `torch.library.custom_op`s, one opaque
op each (no graph break, no host sync). `nanigpt.kernels._launch` says how; the autograd.Function
around each op is traced by Dynamo.

Without CUDA, Triton can only run through its interpreter: importing this package then sets
`TRITON_INTERPRET=1` (unless set already), so the CPU tests and the CPU benchmark run the same
kernels. It must happen before `import triton` anywhere in the process (Triton's own library
functions are bound to the interpreter at import), which is why it lives here, ahead of every
kernel module, and why tests/conftest.py sets it too. On a GPU it must stay unset (the interpreter
would run the kernels in Python, on the host).
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from nanigpt.model.config import IMPLS, KERNELS, resolve_kernels  # noqa: E402, F401


def interpreted() -> bool:
    """True when Triton kernels run in the interpreter (CPU), not compiled for a GPU."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
