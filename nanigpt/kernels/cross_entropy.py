"""The output projection and the cross-entropy fused in token chunks, forward and backward (core question 6).

The eager loss materialises the [tokens x vocab] logits (and a float32 copy, and the log-softmax,
and their gradients): at 32k tokens and a 50k vocabulary that is several GiB and, on an H100, 5.7 ms
of a GPT-2 124M step in an fp32 log-softmax. Here the tokens are cut into chunks sized so one chunk
of logits fits a memory budget; per chunk
1. logits = h_chunk @ W^T (a torch matmul, in the compute dtype: bf16 under autocast);
2. a Triton kernel, one program per row, computes the log-sum-exp online over vocabulary blocks
   (Milakov & Gimelshein 2018), the row's loss lse - logit[target], and overwrites the logits with
   their gradient (softmax - onehot(target)) / n_valid in place;
3. grad_h_chunk = grad_logits @ W and grad_W += grad_logits^T @ h_chunk (float32 accumulator).
So the gradients are finished in the forward and the backward only scales them by the incoming
gradient (Liger-Kernel's fused linear cross-entropy, Hsu et al. 2024, arXiv 2410.10989; Apple's
cut cross-entropy, Wijmans et al. 2024, arXiv 2411.09009, goes further and never writes a logits
chunk to memory). Mean over the targets that are not `ignore_index` (-100, PyTorch's convention);
the count stays on the device (no host sync). A weight tied to the input embedding gets its
gradient summed with the embedding's by autograd, as with the eager loss.

The reference `linear_cross_entropy_reference` is the eager model's: F.linear in the compute dtype,
then a float32 `F.cross_entropy`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from nanigpt.kernels._launch import MAX_BLOCK, block_for, warps_for

IGNORE_INDEX = -100
CHUNK_BUDGET_BYTES = 1 << 30  # one chunk of logits (in the compute dtype) stays under this


def linear_cross_entropy_reference(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    compute_dtype: torch.dtype | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Mean cross-entropy of logits = h @ weight^T (h [tokens, d], weight [vocab, d])."""
    dtype = compute_dtype or h.dtype
    logits = F.linear(h.to(dtype), weight.to(dtype))
    return F.cross_entropy(logits.float(), targets, ignore_index=ignore_index)


def chunk_tokens_for(
    n_tokens: int, vocab: int, dtype: torch.dtype, budget_bytes: int = CHUNK_BUDGET_BYTES
) -> int:
    """Tokens per chunk: the largest power of two whose logits fit the budget, at most n_tokens."""
    fits = max(1, budget_bytes // (vocab * torch.empty((), dtype=dtype).element_size()))
    return max(1, min(n_tokens, 1 << (fits.bit_length() - 1)))


@triton.jit
def _cross_entropy_kernel(
    logits_ptr, row_stride, targets_ptr, loss_ptr, scale_ptr, n_cols, ignore_index,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Loss of one row and its logits overwritten by d(loss)/d(logits), scaled by *scale_ptr."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * row_stride
    target = tl.load(targets_ptr + row)
    valid = target != ignore_index
    cols = tl.arange(0, BLOCK)
    m = float("-inf")
    s = 0.0
    for start in range(0, n_cols, BLOCK):
        x = tl.load(row_ptr + start + cols, mask=start + cols < n_cols, other=float("-inf"))
        x = x.to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    target_logit = tl.load(row_ptr + tl.where(valid, target, 0)).to(tl.float32)
    tl.store(loss_ptr + row, tl.where(valid, lse - target_logit, 0.0))
    scale = tl.where(valid, tl.load(scale_ptr), 0.0)
    for start in range(0, n_cols, BLOCK):
        mask = start + cols < n_cols
        x = tl.load(row_ptr + start + cols, mask=mask, other=0.0).to(tl.float32)
        grad = tl.exp(x - lse) - tl.where(start + cols == target, 1.0, 0.0)
        tl.store(row_ptr + start + cols, (grad * scale).to(logits_ptr.dtype.element_ty), mask=mask)


def loss_and_grad_logits_(
    logits: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor, ignore_index: int,
    max_block: int = MAX_BLOCK,
) -> torch.Tensor:  # fmt: skip
    """Per-row losses (float32) of logits [rows, vocab]; logits become their gradient * scale."""
    rows, vocab = logits.shape
    losses = torch.empty(rows, device=logits.device, dtype=torch.float32)
    block = block_for(vocab, min(max_block, 4096))
    _cross_entropy_kernel[(rows,)](
        logits, logits.stride(0), targets, losses, scale, vocab, ignore_index, BLOCK=block,
        num_warps=warps_for(block),
    )  # fmt: skip
    return losses


@torch.library.custom_op("nanigpt::linear_cross_entropy_fwd", mutates_args=())
def linear_cross_entropy_fwd(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, compute_dtype: torch.dtype,
    ignore_index: int, chunk_tokens: int, max_block: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(mean loss float32, d loss / d h in h's dtype, d loss / d weight in weight's dtype)."""
    h, weight, targets = h.contiguous(), weight.contiguous(), targets.contiguous()
    n_tokens = h.shape[0]
    with torch.autocast(h.device.type, enabled=False):
        w = weight.to(compute_dtype)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(weight.shape, device=h.device, dtype=torch.float32)
        n_valid = (targets != ignore_index).sum()
        scale = (1.0 / n_valid.float()).reshape(1)
        losses = []
        for start in range(0, n_tokens, chunk_tokens):
            h_chunk = h[start : start + chunk_tokens].to(compute_dtype)
            logits = h_chunk @ w.t()
            losses.append(
                loss_and_grad_logits_(
                    logits, targets[start : start + chunk_tokens], scale, ignore_index, max_block
                )
            )
            grad_h[start : start + chunk_tokens] = logits @ w
            if compute_dtype == torch.float32:
                grad_w.addmm_(logits.t(), h_chunk)
            else:
                grad_w += (logits.t() @ h_chunk).float()
        loss = torch.cat(losses).sum() * scale[0]
    return loss, grad_h, grad_w.to(weight.dtype)


@linear_cross_entropy_fwd.register_fake
def _(h, weight, targets, compute_dtype, ignore_index, chunk_tokens, max_block):
    return (
        h.new_empty((), dtype=torch.float32),
        h.new_empty(h.shape),
        weight.new_empty(weight.shape),
    )


class LinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, compute_dtype, ignore_index, chunk_tokens, max_block):
        loss, grad_h, grad_w = linear_cross_entropy_fwd(
            h.contiguous(), weight.contiguous(), targets.contiguous(), compute_dtype,
            ignore_index, chunk_tokens, max_block,
        )  # fmt: skip
        ctx.save_for_backward(grad_h, grad_w)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_loss.float()
        return (
            (grad_h * scale).to(grad_h.dtype),
            (grad_w * scale).to(grad_w.dtype),
            None, None, None, None, None,
        )  # fmt: skip


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    compute_dtype: torch.dtype | None = None,
    ignore_index: int = IGNORE_INDEX,
    chunk_tokens: int | None = None,
    max_block: int = MAX_BLOCK,
) -> torch.Tensor:
    """Mean cross-entropy of h [tokens, d] @ weight [vocab, d]^T against targets [tokens].

    `compute_dtype` is the matmul dtype (default h's; the model passes the autocast dtype);
    the softmax and the loss are float32. `chunk_tokens` defaults to what fits CHUNK_BUDGET_BYTES.
    """
    if h.dim() != 2 or weight.dim() != 2 or h.shape[1] != weight.shape[1]:
        raise ValueError(
            f"linear_cross_entropy: h {tuple(h.shape)}, weight {tuple(weight.shape)}: expected "
            f"h [tokens, d] and weight [vocab, d]"
        )
    if targets.shape != h.shape[:1]:
        raise ValueError(
            f"linear_cross_entropy: targets {tuple(targets.shape)}: expected [{h.shape[0]}]"
        )
    dtype = compute_dtype or h.dtype
    chunk = chunk_tokens or chunk_tokens_for(h.shape[0], weight.shape[0], dtype)
    return LinearCrossEntropyFunction.apply(
        h, weight, targets, dtype, ignore_index, chunk, max_block
    )
