"""Hand-written ZeRO-1 and ZeRO-2: shard the optimizer state (and the gradients) over the group.

Serves core question 2: sharded data parallel trades DDP's one all_reduce for a reduce_scatter of
the gradients and an all_gather of the updated parameters, the same wire bytes (an all_reduce is
a reduce_scatter followed by an all_gather; Rajbhandari et al. 2020, ZeRO, section 7) but each rank
keeps only 1/n of the AdamW state (and, stage 2, of the reduced gradients).

Layout: parameters are bucketed (reverse order, decay and no-decay apart), each bucket a flat buffer
padded to a multiple of n; the model's parameters become views into it. Rank r owns slice r of every
bucket: an fp32 copy of that slice is the parameter its AdamW updates.
- Stage 1: gradients are kept whole; after backward, `finish()` reduce-scatters each bucket.
- Stage 2: a post-accumulate-grad hook copies each gradient into its bucket and frees it; the full
  bucket's reduce_scatter fires asynchronously as soon as it is complete (overlapping backward), and
  only the 1/n slice survives.
After the update, `step()` all-gathers every bucket back into the parameters.
Bytes per step (the ledger's check): reduce_scatter and all_gather each move the padded buckets.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn

from nanigpt.parallel.ddp import DEFAULT_BUCKET_BYTES, GradSyncSwitch, make_buckets
from nanigpt.parallel.ledger import Ledger


class ZeroOptimizer(GradSyncSwitch):
    """AdamW with ZeRO stage 1 or 2 over `group`; looks like a torch optimizer to the trainer."""

    def __init__(
        self,
        params: list[nn.Parameter],
        group,
        group_name: str,
        ledger: Ledger,
        stage: int,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    ):
        if stage not in (1, 2):
            raise ValueError(f"ZeroOptimizer: stage={stage!r}; expected 1 or 2")
        self.group, self.group_name, self.ledger, self.stage = group, group_name, ledger, stage
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        params = [p for p in params if p.requires_grad]
        self.params = params
        self.buckets = make_buckets(
            params,
            bucket_bytes,
            pad_to=self.world,
            kind_of=lambda p: "decay" if p.dim() >= 2 else "no_decay",
        )
        self.shards: list[torch.Tensor] = []
        self._where = {}
        for b in self.buckets:
            dev = b.params[0].device
            b.param_flat = torch.zeros(b.padded, dtype=b.dtype, device=dev)
            for p, off in zip(b.params, b.offsets, strict=True):
                b.param_flat[off : off + p.numel()].copy_(p.detach().reshape(-1))
                p.data = b.param_flat[off : off + p.numel()].view_as(p)
                self._where[p] = (b, off)
            s = b.padded // self.world
            b.shard_size = s
            shard = b.param_flat[self.rank * s : (self.rank + 1) * s].detach().float().clone()
            shard.requires_grad_(True)
            b.shard = shard
            b.shard_grad = None
            self.shards.append(shard)
        decay = [b.shard for b in self.buckets if b.kind == "decay"]
        no_decay = [b.shard for b in self.buckets if b.kind == "no_decay"]
        groups = [
            g
            for g in (
                {"params": decay, "weight_decay": weight_decay, "kind": "decay"},
                {"params": no_decay, "weight_decay": 0.0, "kind": "no_decay"},
            )
            if g["params"]
        ]
        self.inner = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
        self.sync = True
        self._hooks = []
        if stage == 2:
            self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad) for p in params]

    @property
    def param_groups(self):
        return self.inner.param_groups

    def state_dict(self):
        return self.inner.state_dict()

    # --- gradients ------------------------------------------------------------------------
    def _copy_in(self, b, p, off) -> None:
        if b.flat is None:
            b.flat = torch.zeros(b.padded, dtype=b.dtype, device=p.device)
        if p.grad is not None:
            b.flat[off : off + p.numel()].copy_(p.grad.reshape(-1)).div_(self.world)
        b.copied.add(p)

    def _launch(self, b) -> None:
        s = b.shard_size
        b.shard_grad = torch.empty(s, dtype=b.dtype, device=b.flat.device)
        b.handle = self.ledger.reduce_scatter(
            b.shard_grad, b.flat, group=self.group, group_name=self.group_name, purpose="grad",
            async_op=self.stage == 2,
        )  # fmt: skip

    def _on_grad(self, p: torch.Tensor) -> None:
        if not self.sync:
            return
        b, off = self._where[p]
        self._copy_in(b, p, off)
        p.grad = None  # stage 2: the full gradient does not outlive its bucket's copy
        if len(b.copied) == len(b.params):
            self._launch(b)

    def finish(self) -> None:
        """After the last backward: every bucket's reduce_scatter issued and complete."""
        for b in self.buckets:
            if b.shard_grad is None:
                for p, off in zip(b.params, b.offsets, strict=True):
                    if p not in b.copied:
                        self._copy_in(b, p, off)
                self._launch(b)
        for b in self.buckets:
            if b.handle is not None:
                b.handle.wait()
            b.shard.grad = b.shard_grad.float()
            b.flat, b.handle, b.shard_grad = None, None, None
            b.copied.clear()
        if self.stage == 2:
            for p in self.params:
                p.grad = None

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Global gradient norm from the shards (one scalar all_reduce), then clip the shards."""
        sq = sum(
            (s.grad.double().square().sum() for s in self.shards),
            torch.zeros((), dtype=torch.float64, device=self.shards[0].device),
        )
        sq = sq.reshape(1)
        self.ledger.all_reduce(
            sq, group=self.group, group_name=self.group_name, purpose="grad_norm"
        )
        norm = sq.sqrt()[0].float()
        coef = max_norm / (float(norm) + 1e-6)
        if coef < 1:
            for s in self.shards:
                s.grad.mul_(coef)
        return norm

    # --- update -----------------------------------------------------------------------------
    def step(self) -> None:
        self.inner.step()
        for b in self.buckets:
            local = b.shard.detach().to(b.dtype)
            self.ledger.all_gather(
                b.param_flat, local, group=self.group, group_name=self.group_name, purpose="param"
            )

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None
        for s in self.shards:
            s.grad = None

    def expected_bytes(self) -> dict[str, int]:
        """Per step: reduce_scatter and all_gather payloads (padded buckets)."""
        total = sum(b.padded * torch.empty((), dtype=b.dtype).element_size() for b in self.buckets)
        return {"reduce_scatter": total, "all_gather": total}

    def state_bytes(self) -> int:
        """AdamW state bytes held by this rank (two fp32 moments + the fp32 shard)."""
        return 3 * sum(s.numel() * 4 for s in self.shards)
