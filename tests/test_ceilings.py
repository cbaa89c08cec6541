"""Tests of nanigpt.analysis.ceilings on the CPU with tiny sizes (question 1: MFU denominators)."""

from __future__ import annotations

import json

import pytest

from nanigpt.analysis.ceilings import device_slug, main, measure, peak_bandwidth
from nanigpt.measure.hardware import slugify


def test_measure_cpu_tiny():
    result = measure("cpu", matmul_n=64, copy_bytes=1 << 16, repeats=3, warmup=1)
    assert result["device_slug"] == "cpu"
    assert result["matmul"]["flops_per_call"] == 2 * 64**3
    assert len(result["matmul"]["seconds_samples"]) == 3
    assert result["matmul_flops_per_s"] > 0 and result["copy_bytes_per_s"] > 0
    assert result["copy"]["bytes_moved_per_call"] == 2 * (1 << 16)  # read + write
    assert result["datasheet_peak_flops"] is None and result["matmul_fraction_of_datasheet"] is None


def test_cli_writes_json(tmp_path):
    out = tmp_path / "hardware" / "cpu.json"
    args = ["--out", str(out), "--device", "cpu", "--matmul-n", "32", "--copy-bytes", "4096"]
    assert main([*args, "--repeats", "2"]) == 0
    data = json.loads(out.read_text())
    assert data["device_type"] == "cpu" and data["ridge_intensity"] > 0
    assert main(["--out", str(out), "--device", "tpu"]) == 2


def test_names_and_datasheet():
    assert slugify("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert device_slug("cpu") == "cpu"
    assert peak_bandwidth("NVIDIA H100 80GB HBM3") == pytest.approx(3.35e12)
    assert peak_bandwidth("NVIDIA H100 PCIe") == pytest.approx(2.0e12)
    assert peak_bandwidth("NVIDIA H200") == pytest.approx(4.8e12)
    assert peak_bandwidth("cpu (x86_64, 2 threads)") is None
