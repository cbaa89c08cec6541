"""Per-replica optimizer pieces for stacked runs: AdamW, gradient clipping and the lr schedule,
each taking one value per replica as a device tensor, so a step needs no host synchronisation.

Serves issue 28 (a sweep at the hardware's speed): `nanigpt.training.stacked` trains K runs of one
shape as one model; each run keeps its own lr schedule, weight decay and clipping, exactly as the
trainer applies them to the run alone (tests/test_stacked.py holds them equal):
- `ReplicaAdamW`: AdamW (Loshchilov & Hutter 2019, decoupled weight decay) in the arithmetic of
  `torch.optim.AdamW`: p *= 1 - lr * wd; m = lerp(m, g, 1 - beta1); v = beta2 v + (1 - beta2) g^2;
  p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps); decay on matrices only
  (the trainer's groups, `nanigpt.parallel.apply.Parallelized.make_optimizer`). lr and wd are [K]
  tensors; the step count is a device tensor; the math is `torch._foreach_*` over the stacked
  parameters, one kernel per operation for all parameters of all replicas.
- `clip_per_replica_`: each replica's global gradient norm (the sum of squares in float64, as the
  trainer) and the factor min(1, max_norm / (norm + 1e-6)) of `torch.nn.utils.clip_grad_norm_`.
- `lr_table`: `nanigpt.training.schedule.lr_at` of every replica at every step, a [K, steps] tensor
  indexed on the device by the step counter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from nanigpt.training.schedule import lr_at


def lr_table(schedules: Sequence[dict[str, Any]], steps: int, device: torch.device | str = "cpu"):
    """[K, steps] float32: `lr_at(step, steps, **schedule)` of each replica's schedule."""
    rows = [[lr_at(s, steps, **schedule) for s in range(steps)] for schedule in schedules]
    return torch.tensor(rows, dtype=torch.float32, device=device)


def _per_replica(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[K] values shaped to broadcast over a stacked tensor [K, ...]."""
    return values.view(-1, *[1] * (like.dim() - 1))


def clip_per_replica_(grads: Sequence[torch.Tensor], max_norm: torch.Tensor | None) -> torch.Tensor:
    """Clip each replica's gradients (dim 0 of every tensor) to `max_norm` [K] (None: only
    measure); returns the norms before clipping [K] (float32). No host sync."""
    sq = None
    for g in grads:
        s = g.detach().double().square().flatten(1).sum(1)
        sq = s if sq is None else sq + s
    norm = sq.sqrt().float()
    if max_norm is not None:
        # float64 like the trainer's factor, exactly 1 when not clipping; applied in float32
        coef = (max_norm.double() / (norm.double() + 1e-6)).clamp(max=1.0).float()
        torch._foreach_mul_(list(grads), [_per_replica(coef, g) for g in grads])
    return norm


class ReplicaAdamW:
    """AdamW over stacked parameters [K, ...] with per-replica lr and weight decay tensors [K].

    `params` are the stacked parameters; `decay[i]` says whether params[i] is decayed (the
    trainer decays tensors of 2+ dims of the *unstacked* model, i.e. stacked dim >= 3).
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        decay: Sequence[bool],
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
    ):
        if len(params) != len(decay):
            raise ValueError(f"{len(params)} params but {len(decay)} decay flags")
        self.params = list(params)
        self.decay = list(decay)
        self.betas, self.eps = betas, eps
        device = self.params[0].device
        self.step_count = torch.zeros((), dtype=torch.float64, device=device)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def state_tensors(self) -> list[torch.Tensor]:
        """Everything a step changes besides the parameters (for snapshot and restore)."""
        return [self.step_count, *self.exp_avg, *self.exp_avg_sq]

    @torch.no_grad()
    def step(self, lr: torch.Tensor, weight_decay: torch.Tensor) -> None:
        """One update of every replica; lr and weight_decay [K] tensors on the params' device."""
        beta1, beta2 = self.betas
        params = [p for p in self.params if p.grad is not None]
        if not params:
            return
        index = [i for i, p in enumerate(self.params) if p.grad is not None]
        grads = [self.params[i].grad for i in index]
        m = [self.exp_avg[i] for i in index]
        v = [self.exp_avg_sq[i] for i in index]
        self.step_count += 1
        lr64 = lr.double()
        decayed = [i for i in index if self.decay[i]]
        if decayed:
            factor = (1 - lr64 * weight_decay.double()).float()
            dp = [self.params[i] for i in decayed]
            torch._foreach_mul_(dp, [_per_replica(factor, p) for p in dp])
        torch._foreach_lerp_(m, grads, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, 1 - beta2)
        bias1 = 1 - beta1**self.step_count
        bias2_sqrt = (1 - beta2**self.step_count).sqrt().float()
        step_size = (lr64 / bias1).float()  # [K]
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, bias2_sqrt)
        torch._foreach_add_(denom, self.eps)
        update = torch._foreach_div(m, denom)
        torch._foreach_mul_(update, [_per_replica(step_size, p) for p in params])
        torch._foreach_sub_(params, update)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
