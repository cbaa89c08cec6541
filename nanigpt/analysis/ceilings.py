"""Measured hardware ceilings: what can this device actually do? (project question 1, MFU, roofline)

MFU against the datasheet says how far a run is from the number on the box; MFU against a measured
ceiling says how far it is from what this chip, driver and library do on the easiest possible
workload. Two numbers are measured, each the median over repeats after warm-up:
- **matmul FLOP/s**: one square matmul, 2 n^3 FLOPs; bf16 at n = 8192 on a GPU (tensor cores),
  float32 at n = 1024 on the CPU (finishes in about a second on two cores);
- **copy bandwidth**: a device-to-device copy of a large buffer (1 GiB on a GPU, 64 MiB on the
  CPU), counting bytes read plus bytes written (2 x the buffer), the convention of STREAM's "copy"
  and of `../shared/ENVIRONMENT.md` (3.0 TB/s on an H100 against a 3.35 TB/s datasheet).
GPU timings use CUDA events around the repeats; the CPU uses `time.perf_counter`.

Beside them go the datasheet peaks (dense bf16 FLOP/s from `nanigpt.measure.hardware`, HBM
bandwidth from the table below); a CPU has neither, so they are null. The file is named by the
device slug (`device_slug`): "cpu" on the CPU, the CUDA name lower-cased with runs of other
characters as "-" on a GPU (`nvidia-h100-80gb-hbm3`).

    python -m nanigpt.analysis.ceilings --out results/hardware/DEVICE.json [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nanigpt.io import write_json_atomic
from nanigpt.measure.hardware import peak_bf16_flops, slugify
from nanigpt.measure.provenance import device_name, package_versions

# Datasheet HBM bandwidth in bytes/s; first substring found in the upper-cased name wins.
# Sources: NVIDIA H100 datasheet (SXM5 3.35 TB/s, PCIe 2.0 TB/s, NVL 3.9 TB/s), H200 datasheet
# (4.8 TB/s, SXM and NVL), A100 datasheet (80GB SXM4 2.039 TB/s, 80GB PCIe 1.935 TB/s, 40GB 1.555 TB/s).
DATASHEET_BANDWIDTH: tuple[tuple[str, float], ...] = (
    ("H100 PCIE", 2.0e12),
    ("H100 NVL", 3.9e12),
    ("H100", 3.35e12),
    ("H200", 4.8e12),
    ("A100 80GB PCIE", 1.935e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB", 2.039e12),
    ("A100", 1.555e12),
)

GPU_DEFAULTS = {"matmul_n": 8192, "copy_bytes": 1 << 30, "repeats": 20, "warmup": 3}
CPU_DEFAULTS = {"matmul_n": 1024, "copy_bytes": 64 << 20, "repeats": 5, "warmup": 1}


def peak_bandwidth(device_name: str | None) -> float | None:
    """Datasheet memory bandwidth (bytes/s) for a CUDA device name; None if unknown or CPU."""
    if not device_name:
        return None
    name = device_name.upper()
    for key, peak in DATASHEET_BANDWIDTH:
        if key in name:
            return peak
    return None


def resolve(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r}: expected auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but CUDA is not available here")
    return torch.device(device)


def device_slug(device: str = "auto") -> str:
    """The file stem of `results/hardware/{device}.json` for a `training.device` setting.

    "cpu" on the CPU; the slugified CUDA name where a GPU is visible; "cuda" when the setting asks
    for CUDA but none is visible here (the workflow is planned on a cluster's login node: the file
    is then named generically, and the JSON inside names the card the job measured).
    """
    if device == "cpu":
        return "cpu"
    if device not in ("auto", "cuda"):
        raise ValueError(f"device {device!r}: expected auto, cpu or cuda")
    if torch.cuda.is_available():
        return slugify(torch.cuda.get_device_name(0))
    return "cuda" if device == "cuda" else "cpu"


def _time_s(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Seconds per call of `fn`, one sample per repeat, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    return samples


def measure_matmul(
    device: torch.device, n: int, dtype: torch.dtype, repeats: int, warmup: int
) -> dict[str, Any]:
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    samples = _time_s(lambda: torch.mm(a, b, out=out), device, repeats, warmup)
    median = statistics.median(samples)
    flops = 2 * n**3
    return {
        "n": n,
        "dtype": str(dtype).removeprefix("torch."),
        "flops_per_call": flops,
        "seconds_median": median,
        "seconds_samples": samples,
        "flops_per_s": flops / median,
    }


def measure_copy(device: torch.device, nbytes: int, repeats: int, warmup: int) -> dict[str, Any]:
    src = torch.ones(nbytes // 4, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    samples = _time_s(lambda: dst.copy_(src), device, repeats, warmup)
    median = statistics.median(samples)
    moved = 2 * src.numel() * src.element_size()  # read + write
    return {
        "buffer_bytes": src.numel() * src.element_size(),
        "bytes_moved_per_call": moved,
        "seconds_median": median,
        "seconds_samples": samples,
        "bytes_per_s": moved / median,
    }


def measure(
    device: str = "auto",
    matmul_n: int | None = None,
    copy_bytes: int | None = None,
    repeats: int | None = None,
    warmup: int | None = None,
) -> dict[str, Any]:
    """Measure the ceilings of `device`; None arguments take the GPU or CPU defaults above."""
    dev = resolve(device)
    defaults = GPU_DEFAULTS if dev.type == "cuda" else CPU_DEFAULTS
    n = matmul_n or defaults["matmul_n"]
    nbytes = copy_bytes or defaults["copy_bytes"]
    reps = repeats or defaults["repeats"]
    warm = defaults["warmup"] if warmup is None else warmup
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    name = device_name(dev)
    matmul = measure_matmul(dev, n, dtype, reps, warm)
    copy = measure_copy(dev, nbytes, reps, warm)
    cuda_name = name if dev.type == "cuda" else None
    peak_flops, peak_bw = peak_bf16_flops(cuda_name), peak_bandwidth(cuda_name)
    return {
        "device": name,
        "device_slug": "cpu" if dev.type == "cpu" else slugify(name),
        "device_type": dev.type,
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
        "matmul_flops_per_s": matmul["flops_per_s"],
        "copy_bytes_per_s": copy["bytes_per_s"],
        "ridge_intensity": matmul["flops_per_s"] / copy["bytes_per_s"],
        "datasheet_peak_flops": peak_flops,
        "datasheet_peak_bytes_per_s": peak_bw,
        "matmul_fraction_of_datasheet": matmul["flops_per_s"] / peak_flops if peak_flops else None,
        "copy_fraction_of_datasheet": copy["bytes_per_s"] / peak_bw if peak_bw else None,
        "matmul": matmul,
        "copy": copy,
        "packages": package_versions(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.analysis.ceilings",
        description="Measure the device's matmul FLOP/s and copy bandwidth.",
    )
    parser.add_argument("--out", required=True, help="results/hardware/DEVICE.json")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--matmul-n", type=int, default=None, help="square matmul size")
    parser.add_argument("--copy-bytes", type=int, default=None, help="copy buffer size in bytes")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (median)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = measure(args.device, args.matmul_n, args.copy_bytes, args.repeats)
    except ValueError as e:
        print(f"nanigpt.analysis.ceilings: error: {e}", file=sys.stderr)
        return 2
    stem = Path(args.out).stem
    if stem not in (result["device_slug"], result["device_type"]):
        print(
            f"nanigpt.analysis.ceilings: warning: {args.out} is named '{stem}' but the device "
            f"measured is '{result['device_slug']}' ({result['device']})",
            file=sys.stderr,
        )
    write_json_atomic(args.out, result)
    print(
        f"{result['device']}: matmul {result['matmul_flops_per_s'] / 1e12:.3f} TFLOP/s "
        f"({result['matmul']['dtype']}, n={result['matmul']['n']}), copy "
        f"{result['copy_bytes_per_s'] / 1e9:.1f} GB/s (read + write); wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
