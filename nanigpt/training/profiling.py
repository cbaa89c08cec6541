"""Which steps of a run are profiled: the trace window of rank 0, kept across a resume.

Serves project question 1 (where does time go in a step): rank 0 traces `profile.active` steps
after `wait` + `warmup` (`nanigpt.measure.trace.TraceWindow`); a run resumed after its window wrote
the trace gets it back from the checkpoint, one resumed before it profiles the window after
resuming. Other ranks do not profile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nanigpt.measure.trace import TraceWindow
from nanigpt.training.config import ProfileConfig


class NoTrace:
    """The profiler window of ranks other than 0 (only rank 0 profiles and writes the trace)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def recording(self, step: int) -> bool:
        return False

    def step(self) -> None:
        return None


def open_trace(
    path: Path,
    profile: ProfileConfig,
    device: torch.device,
    state: dict[str, Any] | None,
    is_main: bool,
    metadata: dict[str, Any],
) -> tuple[Any, int]:
    """(trace window, step offset of its first step); restores a trace the checkpoint holds."""
    if not is_main:
        return NoTrace(), 0
    offset = 0
    trace_done = state is not None and state.get("trace") is not None
    if trace_done:
        from nanigpt.io import write_bytes_atomic

        write_bytes_atomic(path, state["trace"].numpy().tobytes())
    elif state is not None and profile.enabled:
        offset = state["step"]
    trace = TraceWindow(
        path,
        device,
        enabled=profile.enabled and not trace_done,
        wait=profile.wait,
        warmup=profile.warmup,
        active=profile.active,
        metadata=metadata,
    )
    trace.written = trace_done
    return trace, offset
