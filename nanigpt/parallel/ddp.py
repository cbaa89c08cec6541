"""Data parallel training two ways: a hand-written bucketed DDP and PyTorch's own, both in the ledger.

Serves core question 2: DDP's whole communication is one all_reduce of the gradient bytes per step,
cut into buckets so that it can start while backward still runs (Li et al. 2020, "PyTorch
Distributed", VLDB). The hand-written `ManualDDP` shows the primitive: parameters are bucketed in
reverse registration order (roughly the order backward produces their gradients), a
post-accumulate-grad hook copies each gradient (pre-divided by the group size, so SUM gives the
mean; gloo has no AVG) into its bucket's flat buffer, and the bucket's async all_reduce fires the
moment its last gradient lands. `finish()` waits for them all and points `p.grad` at the reduced
buffer. `BuiltinDDP` wraps `torch.nn.parallel.DistributedDataParallel` and registers a comm hook
that records every bucket it all-reduces.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn as nn

from nanigpt.parallel.ledger import Handle, Ledger

DEFAULT_BUCKET_BYTES = 25 * 2**20  # torch DDP's default bucket_cap_mb=25


@dataclass
class Bucket:
    params: list[nn.Parameter]
    offsets: list[int]
    numel: int  # sum of the parameters' numels (unpadded)
    padded: int  # numel rounded up to a multiple of `pad_to`
    dtype: torch.dtype
    kind: str = ""  # a tag the caller chose (e.g. "decay" / "no_decay")
    flat: torch.Tensor | None = None  # gradient buffer
    ready: int = 0
    handle: Handle | None = field(default=None, repr=False)
    copied: set = field(default_factory=set, repr=False)


def make_buckets(
    params: list[nn.Parameter],
    cap_bytes: int,
    pad_to: int = 1,
    kind_of=lambda p: "",
) -> list[Bucket]:
    """Buckets of at most ~cap_bytes, in reverse parameter order, never mixing dtype or kind."""
    buckets: list[Bucket] = []
    current: dict[tuple, Bucket] = {}
    for p in reversed(params):
        key = (p.dtype, kind_of(p))
        b = current.get(key)
        size = p.numel() * p.element_size()
        if b is None or (b.numel * p.element_size() + size > cap_bytes and b.params):
            b = Bucket([], [], 0, 0, p.dtype, kind_of(p))
            buckets.append(b)
            current[key] = b
        b.params.append(p)
        b.offsets.append(b.numel)
        b.numel += p.numel()
    for b in buckets:
        b.padded = -(-b.numel // pad_to) * pad_to
    return buckets


class GradSyncSwitch:
    """`no_sync()`: gradient accumulation without communication while inside (the backward hooks
    read `sync`); shared by the hand-written DDP and ZeRO."""

    sync: bool = True

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        self.sync = False
        try:
            yield
        finally:
            self.sync = True


class ManualDDP(GradSyncSwitch):
    """Hand-written DDP over `params`: bucketed async all_reduce from backward hooks.

    `scale` multiplies the reduced mean (1.0 for plain data parallel). Call `finish()` after the
    last backward of a step; inside `no_sync()` gradients only accumulate locally.
    """

    def __init__(
        self,
        params: list[nn.Parameter],
        group,
        group_name: str,
        ledger: Ledger,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    ):
        self.group, self.group_name, self.ledger = group, group_name, ledger
        self.world = dist.get_world_size(group)
        self.params = [p for p in params if p.requires_grad]
        self.buckets = make_buckets(self.params, bucket_bytes)
        self._where = {}
        for b in self.buckets:
            for p, off in zip(b.params, b.offsets, strict=True):
                self._where[p] = (b, off)
        self.sync = True
        self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad) for p in self.params]

    def _on_grad(self, p: torch.Tensor) -> None:
        if not self.sync or self.world == 1:
            return
        b, off = self._where[p]
        if b.flat is None:
            b.flat = torch.zeros(b.numel, dtype=b.dtype, device=p.device)
        b.flat[off : off + p.numel()].copy_(p.grad.reshape(-1)).div_(self.world)
        b.ready += 1
        b.copied.add(p)
        if b.ready == len(b.params):
            self._launch(b)

    def _launch(self, b: Bucket) -> None:
        b.handle = self.ledger.all_reduce(
            b.flat, group=self.group, group_name=self.group_name, purpose="grad", async_op=True
        )

    def finish(self) -> None:
        """Wait for every bucket's all_reduce (launching any whose parameters got no gradient)."""
        if self.world == 1:
            return
        for b in self.buckets:
            if b.handle is None:  # a parameter got no gradient this step: it contributes zero
                if b.flat is None:
                    b.flat = torch.zeros(b.numel, dtype=b.dtype, device=b.params[0].device)
                for p, off in zip(b.params, b.offsets, strict=True):
                    if p not in b.copied:
                        src = p.grad if p.grad is not None else torch.zeros_like(p)
                        b.flat[off : off + p.numel()].copy_(src.reshape(-1)).div_(self.world)
                self._launch(b)
        for b in self.buckets:
            b.handle.wait()
            for p, off in zip(b.params, b.offsets, strict=True):
                p.grad = b.flat[off : off + p.numel()].view_as(p)
            b.handle, b.ready, b.flat = None, 0, None
            b.copied.clear()

    def expected_grad_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.params)


class BuiltinDDP:
    """torch DDP with a comm hook that records each bucket's all_reduce in the ledger."""

    def __init__(
        self,
        model: nn.Module,
        group,
        group_name: str,
        ledger: Ledger,
        device: torch.device,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    ):
        from torch.nn.parallel import DistributedDataParallel

        self.ledger, self.group_name = ledger, group_name
        self.world = dist.get_world_size(group)
        device_ids = [device.index] if device.type == "cuda" else None
        self.module = DistributedDataParallel(
            model,
            device_ids=device_ids,
            process_group=group,
            bucket_cap_mb=bucket_bytes / 2**20,
            broadcast_buffers=False,
        )
        self.module.register_comm_hook(group, self._hook)

    def _hook(self, group, bucket):
        """allreduce_hook with a ledger entry: mean of the bucket, time from launch to done."""
        buf = bucket.buffer()
        buf.div_(self.world)
        rec = self.ledger.add(
            "all_reduce",
            self.group_name,
            self.world,
            buf.numel() * buf.element_size(),
            "grad",
            "comm_hook",
        )
        start = time.perf_counter()  # host clock: no CUDA calls inside a future's callback
        fut = dist.all_reduce(buf, group=group, async_op=True).get_future()

        def done(f):
            rec._marks = [(start, time.perf_counter(), "seconds")]
            return f.value()[0]

        return fut.then(done)
