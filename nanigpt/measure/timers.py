"""Step-phase timers: where does the time of one training step go? (project question 1)

A step is split into phases (data, forward, backward, optimizer, and later communication). On a GPU
the phases are timed with CUDA events recorded on the current stream, so they measure device time
without a synchronisation per phase; the events are read once, at the end of the step. On the CPU a
monotonic clock (`time.perf_counter`) brackets each phase. A phase may run several times in a step
(gradient accumulation): its times add up. Whatever the phases do not cover (Python overhead between
them) is reported as `other_s`, so the phases always sum to the step time.
`end_step_deferred` closes a step without waiting for the GPU: the training loop reads a step's
times one step later, so the host never waits on the device between steps.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import torch


class StepTimer:
    """Times named phases inside a step.

    Usage::

        timer.start_step()
        with timer.phase("data"): ...
        with timer.phase("forward"): ...
        times = timer.end_step()   # {"data_s": ..., "forward_s": ..., "other_s": ..., "step_time_s": ...}
    """

    def __init__(self, device: torch.device | str, phases: tuple[str, ...] = ()):
        self.device = torch.device(device)
        self.use_cuda_events = self.device.type == "cuda"
        self.phases = list(phases)
        self._spans: list[tuple[str, object, object]] = []
        self._step_start: object = None

    def _mark(self) -> object:
        if self.use_cuda_events:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _elapsed_s(self, start: object, end: object) -> float:
        if self.use_cuda_events:
            return start.elapsed_time(end) / 1000.0  # type: ignore[attr-defined]
        return end - start  # type: ignore[operator]

    def start_step(self) -> None:
        self._spans = []
        self._step_start = self._mark()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self._step_start is None:
            raise RuntimeError(f"StepTimer.phase({name!r}) called outside start_step()/end_step()")
        if name not in self.phases:
            self.phases.append(name)
        start = self._mark()
        try:
            yield
        finally:
            self._spans.append((name, start, self._mark()))

    def end_step(self) -> dict[str, float]:
        """Close the step; returns `{phase}_s` for every known phase, `other_s` and `step_time_s`."""
        return self.end_step_deferred()()

    def end_step_deferred(self) -> Callable[[], dict[str, float]]:
        """Close the step now; the returned function reads its times (waiting for the GPU then)."""
        if self._step_start is None:
            raise RuntimeError("StepTimer.end_step() called without start_step()")
        end = self._mark()
        step_start, spans, phases = self._step_start, self._spans, list(self.phases)
        self._step_start = None
        self._spans = []

        def read() -> dict[str, float]:
            if self.use_cuda_events:
                end.synchronize()  # type: ignore[attr-defined]
            times = {f"{name}_s": 0.0 for name in phases}
            for name, start, stop in spans:
                times[f"{name}_s"] += self._elapsed_s(start, stop)
            step_time = self._elapsed_s(step_start, end)
            times["other_s"] = max(0.0, step_time - sum(times[f"{name}_s"] for name in phases))
            times["step_time_s"] = step_time
            return times

        return read
