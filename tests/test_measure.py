"""Tests of nanigpt.measure: the numbers every run carries (step breakdown, traces, MFU, provenance)."""

from __future__ import annotations

import gzip
import json
import time

import pytest
import torch

from nanigpt.measure.hardware import mfu, peak_bf16_flops
from nanigpt.measure.provenance import (
    code_version,
    collect_provenance,
    config_hash,
    device_name,
    package_versions,
)
from nanigpt.measure.timers import StepTimer
from nanigpt.measure.trace import TraceWindow


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4e12),
        ("NVIDIA H100 PCIe", 756.5e12),
        ("NVIDIA H200", 989.4e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("cpu (x86_64, 1 threads)", None),
        (None, None),
    ],
)
def test_datasheet_peaks(name, peak):
    assert peak_bf16_flops(name) == peak


def test_mfu():
    assert mfu(6e9, 1e5, 989.4e12) == pytest.approx(6e14 / 989.4e12)
    assert mfu(6e9, 1e5, None) is None


def test_timer_phases_sum_to_step_time():
    timer = StepTimer("cpu", ("data", "forward", "backward", "optimizer"))
    timer.start_step()
    for _ in range(2):  # gradient accumulation: a phase runs twice and its times add up
        with timer.phase("data"):
            time.sleep(0.01)
        with timer.phase("forward"):
            time.sleep(0.02)
        with timer.phase("backward"):
            time.sleep(0.02)
    with timer.phase("optimizer"):
        time.sleep(0.01)
    times = timer.end_step()
    phases = sum(times[f"{p}_s"] for p in ("data", "forward", "backward", "optimizer"))
    assert times["forward_s"] >= 0.04
    assert phases == pytest.approx(times["step_time_s"], rel=0.05)
    assert phases + times["other_s"] == pytest.approx(times["step_time_s"])


def test_timer_misuse_is_reported():
    timer = StepTimer("cpu")
    with pytest.raises(RuntimeError, match="outside start_step"), timer.phase("data"):
        pass
    with pytest.raises(RuntimeError, match="without start_step"):
        timer.end_step()


def _loop(window: TraceWindow, steps: int) -> list[bool]:
    weight = torch.randn(32, 32, requires_grad=True)
    recorded = []
    with window:
        for step in range(steps):
            (torch.randn(8, 32) @ weight).sum().backward()
            recorded.append(window.recording(step))
            window.step()
    return recorded


def test_trace_window_writes_gzipped_chrome_trace(tmp_path):
    out = tmp_path / "trace.json.gz"
    window = TraceWindow(out, "cpu", wait=1, warmup=1, active=2, metadata={"run_id": "t"})
    recorded = _loop(window, 6)
    assert recorded == [False, True, True, True, False, False]
    trace = json.loads(gzip.decompress(out.read_bytes()))
    names = {event.get("name", "") for event in trace["traceEvents"]}
    assert any("mm" in name for name in names), sorted(names)[:20]
    assert [p.name for p in tmp_path.iterdir()] == ["trace.json.gz"]  # no temporary files left


def test_trace_disabled_writes_empty_valid_trace(tmp_path):
    out = tmp_path / "trace.json.gz"
    assert _loop(TraceWindow(out, "cpu", enabled=False), 2) == [False, False]
    trace = json.loads(gzip.decompress(out.read_bytes()))
    assert trace["traceEvents"] == []


def test_trace_window_longer_than_run_still_writes(tmp_path):
    out = tmp_path / "trace.json.gz"
    _loop(TraceWindow(out, "cpu", wait=0, warmup=1, active=5), 3)
    assert json.loads(gzip.decompress(out.read_bytes()))["traceEvents"] is not None


def test_config_hash_is_canonical():
    a = {"b": 1, "a": {"y": 2, "x": [1, 2]}}
    b = {"a": {"x": [1, 2], "y": 2}, "b": 1}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({**a, "b": 2})
    assert len(config_hash(a)) == 64


def test_provenance_fields():
    version = code_version()
    assert len(version["source_sha256"]) == 64
    assert version["git_commit"] is None or len(version["git_commit"]) == 40
    packages = package_versions()
    assert packages["torch"] and packages["python"]
    assert device_name("cpu").startswith("cpu")
    prov = collect_provenance({"run_id": "x"}, "cpu")
    assert set(prov) == {"config_hash", "code_version", "packages", "device"}
    json.dumps(prov)  # serialisable
