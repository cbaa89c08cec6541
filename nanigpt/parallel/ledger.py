"""A ledger of collectives: every one that fires, with its op, group, bytes and time.

Serves core question 2 (which collectives fire, when, with how many bytes, at what cost). Three ways
a collective gets into the ledger:
- `Ledger.all_reduce`, `reduce_scatter`, `all_gather`, `all_to_all`, `broadcast`: the wrapped
  `torch.distributed` calls that the hand-written strategies make. Bytes are the payload (the buffer
  of an all_reduce, the full input of a reduce_scatter, the full output of an all_gather, the input of
  an all_to_all); `wire_bytes` is what one rank sends on a ring (`cost_model.wire_bytes`), for an
  all_to_all exactly the bytes leaving the rank. Time: on the CPU a monotonic clock around the call
  (for an async op, issue to `wait()` return, and `blocked_s` the time spent inside `wait()`); on a
  GPU CUDA events on the current stream, read once at `end_step`, or with `sync_timing=True` device
  syncs around each collective (accurate per-op times, no overlap: the benchmark's measurement mode).
- `Ledger.intercept()`: a TorchDispatchMode that sees the c10d and functional-collective ops that
  FSDP2 and DTensor issue internally. Bytes are exact; time is the host time of the call (an async
  launch is not its duration), so for these strategies the measured cost is the step time minus the
  compute-only step time (`bench`), and the ledger carries the predicted time beside the bytes.
- torch DDP's reducer calls the process group from C++, so `ddp.BuiltinDDP` registers a comm hook
  that records each bucket's all_reduce (bytes exact, time from launch to the future's completion).

`Ledger.end_step()` closes a step; `step_summaries(link)` gives per step the measured bytes and
seconds beside the alpha-beta prediction; `write_report` writes them as JSON.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

from nanigpt.io import write_text_atomic
from nanigpt.parallel.cost_model import LinkModel, wire_bytes


@dataclass
class CommRecord:
    step: int
    op: str  # all_reduce | reduce_scatter | all_gather | all_to_all | broadcast
    group: str  # mesh dim name(s), e.g. "dp", "fsdp", "fsdp_ep", "world"
    group_size: int
    nbytes: int  # payload, see the module docstring
    wire_bytes: float  # bytes this rank sends (ring model; exact for all_to_all)
    purpose: str  # grad | param | activation | dispatch | counts | metric | unknown
    source: str  # wrapped | intercepted | comm_hook
    seconds: float | None = None
    blocked_s: float | None = None
    _marks: list = field(default_factory=list, repr=False)  # unresolved clock marks


class _Clock:
    """perf_counter on the CPU; CUDA events (or syncs with `sync`) on a GPU."""

    def __init__(self, device: torch.device, sync: bool):
        self.cuda = device.type == "cuda"
        self.sync = sync
        self.device = device

    def mark(self):
        if self.cuda and not self.sync:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @staticmethod
    def elapsed(start, end) -> float:
        if isinstance(start, float):
            return end - start
        return start.elapsed_time(end) / 1000.0


class Handle:
    """An async collective in flight; `wait()` records how long the caller was blocked."""

    def __init__(self, ledger: Ledger, record: CommRecord, work, start):
        self.ledger, self.record, self.work, self.start = ledger, record, work, start

    def wait(self) -> None:
        if self.work is None:
            return
        wait_start = self.ledger.clock.mark()
        self.work.wait()
        end = self.ledger.clock.mark()
        self.record._marks = [(self.start, end, "seconds"), (wait_start, end, "blocked_s")]
        self.work = None


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class Ledger:
    """Collects `CommRecord`s step by step; also the wrapped collectives themselves."""

    def __init__(self, device: torch.device | str = "cpu", sync_timing: bool = False):
        self.device = torch.device(device)
        self.clock = _Clock(self.device, sync_timing)
        self.records: list[CommRecord] = []
        self.step = 0
        self.enabled = True
        self._wrapped_depth = 0

    # --- recording -------------------------------------------------------------------------
    def add(
        self, op: str, group: str, n: int, nbytes: int, purpose: str, source: str, sent=None
    ) -> CommRecord:
        wb = wire_bytes(op, nbytes, n) if sent is None else float(sent)
        rec = CommRecord(self.step, op, group, n, int(nbytes), wb, purpose, source)
        if self.enabled:
            self.records.append(rec)
        return rec

    def _run(self, op, group_name, group, nbytes, purpose, fn, async_op, sent=None):
        n = dist.get_world_size(group)
        rec = self.add(op, group_name, n, nbytes, purpose, "wrapped", sent)
        start = self.clock.mark()
        self._wrapped_depth += 1  # the interceptor must not record this call a second time
        try:
            work = fn(async_op)
        finally:
            self._wrapped_depth -= 1
        if async_op and not self.clock.sync:
            return Handle(self, rec, work, start)
        if async_op:  # measurement mode: no overlap, so the op's own duration is what is timed
            work.wait()
        end = self.clock.mark()
        rec._marks = [(start, end, "seconds"), (start, end, "blocked_s")]
        return Handle(self, rec, None, start) if async_op else None

    # --- wrapped torch.distributed calls ----------------------------------------------------
    def all_reduce(self, t, group=None, group_name="world", purpose="grad", async_op=False):
        return self._run(
            "all_reduce", group_name, group, tensor_bytes(t), purpose,
            lambda a: dist.all_reduce(t, group=group, async_op=a), async_op,
        )  # fmt: skip

    def reduce_scatter(
        self, out, inp, group=None, group_name="world", purpose="grad", async_op=False
    ):
        return self._run(
            "reduce_scatter", group_name, group, tensor_bytes(inp), purpose,
            lambda a: dist.reduce_scatter_tensor(out, inp, group=group, async_op=a), async_op,
        )  # fmt: skip

    def all_gather(self, out, inp, group=None, group_name="world", purpose="param", async_op=False):
        return self._run(
            "all_gather", group_name, group, tensor_bytes(out), purpose,
            lambda a: dist.all_gather_into_tensor(out, inp, group=group, async_op=a), async_op,
        )  # fmt: skip

    def all_to_all(
        self, out, inp, out_splits=None, in_splits=None, group=None, group_name="world",
        purpose="dispatch", async_op=False,
    ):  # fmt: skip
        """all_to_all_single; `in_splits[r]` rows go to rank r. Sent bytes exclude our own rows."""
        rank = dist.get_rank(group)
        n = dist.get_world_size(group)
        row = inp[0].numel() * inp.element_size() if inp.numel() else 0
        own = tensor_bytes(inp) // n if in_splits is None else in_splits[rank] * row
        return self._run(
            "all_to_all", group_name, group, tensor_bytes(inp), purpose,
            lambda a: dist.all_to_all_single(out, inp, out_splits, in_splits, group=group, async_op=a),
            async_op, sent=tensor_bytes(inp) - own,
        )  # fmt: skip

    def broadcast(self, t, src, group=None, group_name="world", purpose="param"):
        return self._run(
            "broadcast", group_name, group, tensor_bytes(t), purpose,
            lambda a: dist.broadcast(t, src=src, group=group, async_op=a), False,
        )  # fmt: skip

    # --- internal collectives (FSDP2, DTensor) ------------------------------------------------
    @contextmanager
    def intercept(self, group_names: dict[str, str] | None = None) -> Iterator[None]:
        """Record the collectives that library code issues inside this block (bytes exact).

        `group_names` maps a process group's name (`group.group_name`) to a mesh-dim label.
        """
        with _Interceptor(self, group_names or {}):
            yield

    # --- steps ------------------------------------------------------------------------------
    def end_step(self) -> None:
        """Resolve this step's clock marks and start the next step."""
        for rec in self.records:
            if rec.step == self.step and rec._marks:
                for start, end, key in rec._marks:
                    if not isinstance(end, float):
                        end.synchronize()  # a CUDA event: wait until the stream reached it
                    setattr(rec, key, _Clock.elapsed(start, end))
                rec._marks = []
        self.step += 1

    def clear(self, before_step: int | None = None) -> None:
        """Drop records (all, or those of steps before `before_step`): a long run keeps few."""
        cut = self.step if before_step is None else before_step
        self.records = [r for r in self.records if r.step >= cut]

    def step_records(self, step: int, purpose: str | None = None) -> list[CommRecord]:
        return [
            r for r in self.records if r.step == step and (purpose is None or r.purpose == purpose)
        ]

    def bytes_by(self, step: int, key=("op", "purpose")) -> dict[tuple, int]:
        out: dict[tuple, int] = {}
        for r in self.step_records(step):
            k = tuple(getattr(r, a) for a in key)
            out[k] = out.get(k, 0) + r.nbytes
        return out

    def step_summaries(self, link: LinkModel | None = None) -> list[dict]:
        """Per closed step: count, bytes, wire bytes, measured and blocked seconds, predicted seconds."""
        out = []
        for step in range(self.step):
            recs = self.step_records(step)
            timed = [r for r in recs if r.seconds is not None]
            row = {
                "step": step,
                "collectives": len(recs),
                "bytes": sum(r.nbytes for r in recs),
                "wire_bytes": sum(r.wire_bytes for r in recs),
                "measured_s": sum(r.seconds for r in timed) if timed else None,
                "blocked_s": _sum_known(r.blocked_s for r in recs),
                "measured_count": len(timed),
                "by_op": {},
            }
            for r in recs:
                k = f"{r.op}:{r.group}:{r.purpose}"
                entry = row["by_op"].setdefault(k, {"count": 0, "bytes": 0, "measured_s": 0.0})
                entry["count"] += 1
                entry["bytes"] += r.nbytes
                entry["measured_s"] += r.seconds or 0.0
            if link is not None:
                row["predicted_s"] = sum(
                    link.time_s(r.op, r.nbytes, r.group_size, sent_bytes=r.wire_bytes) for r in recs
                )
                row["predicted_measured_s"] = sum(
                    link.time_s(r.op, r.nbytes, r.group_size, sent_bytes=r.wire_bytes)
                    for r in timed
                )
            out.append(row)
        return out

    def step_metrics(self, step: int, link: LinkModel | None = None) -> dict[str, float | None]:
        """Flat per-step columns for the trainer's metrics: bytes, measured, blocked, predicted."""
        recs = self.step_records(step)
        timed = [r for r in recs if r.seconds is not None]
        return {
            "comm_collectives": len(recs),
            "comm_bytes": sum(r.nbytes for r in recs),
            "comm_wire_bytes": sum(r.wire_bytes for r in recs),
            "comm_measured_s": sum(r.seconds for r in timed) if timed else None,
            "comm_blocked_s": _sum_known(r.blocked_s for r in recs),
            "comm_predicted_s": (
                sum(
                    link.time_s(r.op, r.nbytes, r.group_size, sent_bytes=r.wire_bytes) for r in recs
                )
                if link is not None
                else None
            ),
        }

    def write_report(self, path, link: LinkModel | None = None, extra: dict | None = None) -> dict:
        """Write predicted vs measured communication per step as JSON (atomically); return it."""
        report = {
            "link_model": link.as_dict() if link else None,
            "steps": self.step_summaries(link),
            "records": [
                {k: v for k, v in asdict(r).items() if k != "_marks"} for r in self.records
            ],
            **(extra or {}),
        }
        write_text_atomic(path, json.dumps(report, indent=1))
        return report


def _sum_known(values) -> float | None:
    """Sum of the values that were measured; None when none was (e.g. comm-hook records)."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None


# --- interception of library collectives -----------------------------------------------------

# op name -> (our op name, index of the "payload" tensor argument or "out"/"in" rule)
_INTERCEPTED = {
    "c10d.allreduce_.default": "all_reduce",
    "c10d._allgather_base_.default": "all_gather",
    "c10d.allgather_into_tensor_coalesced_.default": "all_gather",
    "c10d._reduce_scatter_base_.default": "reduce_scatter",
    "c10d.reduce_scatter_tensor_coalesced_.default": "reduce_scatter",
    "c10d.alltoall_base_.default": "all_to_all",
    "c10d.broadcast_.default": "broadcast",
    "_c10d_functional.all_reduce.default": "all_reduce",
    "_c10d_functional.all_reduce_.default": "all_reduce",
    "_c10d_functional.all_gather_into_tensor.default": "all_gather",
    "_c10d_functional.reduce_scatter_tensor.default": "reduce_scatter",
    "_c10d_functional.all_to_all_single.default": "all_to_all",
}


def _flat_tensors(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, list | tuple):
        return [t for item in x for t in _flat_tensors(item)]
    return []


def _group_of(args) -> tuple[str, int]:
    """(process group name, size) from a c10d op's ScriptObject or a functional op's name string."""
    from torch.distributed.distributed_c10d import _resolve_process_group

    for a in args:
        if isinstance(a, torch.ScriptObject):
            try:
                pg = torch._C._distributed_c10d.ProcessGroup.unbox(a)
                return pg.group_name, pg.size()
            except Exception:  # an unknown object: the group stays unnamed
                continue
        if isinstance(a, str):
            try:
                pg = _resolve_process_group(a)
                return pg.group_name, pg.size()
            except Exception:  # likewise
                continue
    return "unknown", 0


class _Interceptor(TorchDispatchMode):
    def __init__(self, ledger: Ledger, group_names: dict[str, str]):
        super().__init__()
        self.ledger, self.group_names = ledger, group_names

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = _INTERCEPTED.get(str(func))
        if op is None or self.ledger._wrapped_depth:
            return func(*args, **kwargs)
        name, n = _group_of(args)
        label = self.group_names.get(name, name)
        first = _flat_tensors(args[0])
        second = _flat_tensors(args[1]) if len(args) > 1 else []
        if op == "all_gather" and str(func).startswith("c10d."):
            payload = sum(tensor_bytes(t) for t in first)  # outputs come first
        elif op == "all_gather":
            payload = sum(tensor_bytes(t) for t in first) * n  # functional: input, gathered n times
        elif op == "reduce_scatter" and str(func).startswith("c10d."):
            payload = sum(tensor_bytes(t) for t in second)  # (outputs, inputs)
        else:
            payload = sum(tensor_bytes(t) for t in first)
        rec = self.ledger.add(op, label, n, payload, "intercepted", "intercepted")
        start = self.ledger.clock.mark()
        out = func(*args, **kwargs)
        end = self.ledger.clock.mark()
        rec._marks = [(start, end, "blocked_s")]
        if self.ledger.clock.sync and self.ledger.clock.cuda:
            rec._marks.append((start, end, "seconds"))  # synced: the collective's whole duration
        return out
