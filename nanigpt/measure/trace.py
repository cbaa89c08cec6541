"""Profiler traces: what do the kernels of a training step do? (project question 1)

`TraceWindow` wraps a torch.profiler schedule (wait, warmup, active steps) around the training loop
and, when the window closes, writes the Chrome trace gzip-compressed as `trace.json.gz` in the run
folder (Perfetto and chrome://tracing open it as is). The write is atomic (`nanigpt.io`). Shapes,
stacks and memory are not recorded, to keep the file small; the trace analysis only needs kernel
names and times. When profiling is off, an empty but valid trace is written, so the run folder
always has the same four files.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from nanigpt.io import atomic_path

log = logging.getLogger(__name__)


def write_gzip_atomic(src: Path, dest: Path) -> None:
    """Gzip `src` into `dest` through a temporary file, so `dest` appears whole or not at all."""
    with (
        atomic_path(dest) as tmp,
        open(src, "rb") as fin,
        gzip.open(tmp, "wb", compresslevel=6) as fout,
    ):
        shutil.copyfileobj(fin, fout)


def write_empty_trace(dest: Path, reason: str) -> None:
    """A valid trace with no events (opens in Perfetto) recording why it is empty."""
    payload = json.dumps({"traceEvents": [], "otherData": {"nanigpt": reason}}).encode()
    with atomic_path(dest) as tmp, gzip.open(tmp, "wb") as fout:
        fout.write(payload)


def quiet_kineto_without_cuda() -> None:
    """Keep kineto's GPU-probing errors out of the log on a machine without CUDA.

    Exporting a trace, kineto (torch.profiler's backend) collects device properties and calls
    cudaGetDeviceCount even when only CPU activities are recorded; with no NVIDIA driver that
    fails with code 35 (cudaErrorInsufficientDriver) and kineto logs `ERROR ... gpuGetDeviceCount
    failed with code 35`, although the CPU trace is complete. Kineto reads `KINETO_LOG_LEVEL`
    when the profiler first starts (levels: 0 verbose .. 4 error, 5 USDT only); a user's own
    setting is kept."""
    if not torch.cuda.is_available():
        os.environ.setdefault("KINETO_LOG_LEVEL", "5")


class TraceWindow:
    """Profile steps [wait + warmup, wait + warmup + active) of a loop and save the trace.

    Use as a context manager and call `step()` once at the end of every training step. Steps inside
    the recorded window report `recording(step) == True`, so their (slower) timings can be flagged.
    """

    def __init__(
        self,
        out_path: str | Path,
        device: torch.device | str,
        enabled: bool = True,
        wait: int = 1,
        warmup: int = 1,
        active: int = 2,
        metadata: dict[str, Any] | None = None,
    ):
        for name, value in (("wait", wait), ("warmup", warmup), ("active", active)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"profile.{name} must be an int >= 0, got {value!r}")
        self.out_path = Path(out_path)
        self.device = torch.device(device)
        self.enabled = enabled and active > 0
        self.wait, self.warmup, self.active = wait, warmup, active
        self.metadata = metadata or {}
        self.written = False
        self._profiler: profile | None = None

    def recording(self, step: int) -> bool:
        """Whether the profiler records `step` (0-based), i.e. its timings carry profiler overhead."""
        return self.enabled and self.wait <= step < self.wait + self.warmup + self.active

    def _on_trace_ready(self, prof: profile) -> None:
        for key, value in self.metadata.items():
            prof.add_metadata_json(key, json.dumps(value))
        with tempfile.TemporaryDirectory() as tmpdir:
            raw = Path(tmpdir) / "trace.json"
            prof.export_chrome_trace(str(raw))
            write_gzip_atomic(raw, self.out_path)
        self.written = True
        message = f"profiler trace written to {self.out_path}"
        log.info(message)

    def __enter__(self) -> TraceWindow:
        if self.enabled:
            quiet_kineto_without_cuda()
            activities = [ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(ProfilerActivity.CUDA)
            self._profiler = profile(
                activities=activities,
                schedule=schedule(wait=self.wait, warmup=self.warmup, active=self.active, repeat=1),
                on_trace_ready=self._on_trace_ready,
                record_shapes=False,
                profile_memory=False,
                with_stack=False,
            )
            self._profiler.__enter__()
        return self

    def step(self) -> None:
        if self._profiler is not None:
            self._profiler.step()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._profiler is not None:
            self._profiler.__exit__(exc_type, exc, tb)
            self._profiler = None
        if exc_type is None and not self.written:
            reason = "profiling disabled" if not self.enabled else "run ended before the window"
            write_empty_trace(self.out_path, reason)
