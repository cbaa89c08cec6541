"""The Rust trace analysis (`nanigpt_rs.trace_breakdown`) equals the Python reference.

On a real trace written by the trainer's profiler (CPU mode, nested ops), on the synthetic GPU
trace of tests/test_trace_analysis.py (streams, overlap, communication) and with an outlier step,
both implementations give the same table and summary; bad files fail the same way.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from nanigpt.analysis.trace_analysis import analyze_path, main
from nanigpt.train import train
from tests.test_trace_analysis import GPU_TRACE, cpu_op
from tests.test_train import SEQ, make_run, write_tiny_data


def _close(a, b) -> bool:
    """Equal, floats to 1e-12 relative (sums may round differently in the last bit)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(map(_close, a, b))
    if isinstance(a, float) or isinstance(b, float):
        return b == pytest.approx(a, rel=1e-12, abs=1e-18)
    return a == b


def _same(path: Path, drop_outliers: bool = True) -> None:
    python = analyze_path(path, drop_outliers, impl="python")
    rust = analyze_path(path, drop_outliers, impl="rust")
    assert _close(python.rows(), rust.rows())
    assert _close(python.summary(), rust.summary())


@pytest.fixture(scope="module")
def real_trace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trace")
    data = write_tiny_data(root / "data")
    run = make_run(tokens=6 * 8 * SEQ, profile=True)
    run["profile"] = {"enabled": True, "wait": 1, "warmup": 1, "active": 3}
    train(run, data["train"], data["val"], data["gt"], root / "run")
    return root / "run" / "trace.json.gz"


def test_real_trainer_trace_gives_the_same_table(real_trace):
    python = analyze_path(real_trace, impl="python")
    assert python.mode == "cpu" and python.steps == 3 and sum(python.counts.values()) > 100
    _same(real_trace)
    _same(real_trace, drop_outliers=False)


def _write(path: Path, trace) -> Path:
    with gzip.open(path, "wt") as f:
        json.dump(trace, f)
    return path


def test_gpu_and_outlier_traces_give_the_same_table(tmp_path):
    _same(_write(tmp_path / "gpu.json.gz", GPU_TRACE))
    events = [
        cpu_op("ProfilerStep#1", 0, 100, cat="user_annotation"),
        cpu_op("ProfilerStep#2", 100, 1000, cat="user_annotation"),
        cpu_op("ProfilerStep#3", 1100, 100, cat="user_annotation"),
        cpu_op("aten::mm", 10, 50),
        cpu_op("aten::copy_", 200, 800),
        cpu_op("aten::mm", 1110, 50),
    ]
    outlier = _write(tmp_path / "outlier.json.gz", events)  # the bare-list form
    assert analyze_path(outlier, impl="rust").dropped_steps == ["ProfilerStep#2"]
    _same(outlier)
    _same(outlier, drop_outliers=False)
    _same(_write(tmp_path / "empty.json.gz", {"traceEvents": []}))
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(GPU_TRACE))
    _same(plain)


def test_bad_traces_fail_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="bad.json.gz: not a readable Chrome trace"):
        analyze_path(bad, impl="rust")
    wrong = _write(tmp_path / "wrong.json.gz", {"events": []})
    with pytest.raises(ValueError, match="traceEvents"):
        analyze_path(wrong, impl="rust")
    missing = tmp_path / "missing.json.gz"
    assert main(["--trace", str(missing), "--out", str(tmp_path / "x.parquet")]) == 2
    assert "trace not found" in capsys.readouterr().err
