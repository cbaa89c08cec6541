"""Hardware ceilings: how far is a run from what the chip could do? (project question 1, MFU)

Datasheet peak dense bf16 tensor-core FLOP/s (no 2:4 sparsity) for the GPUs the project runs on.
MFU = counted model FLOPs per second / peak (the PaLM paper's definition, appendix B: model FLOPs,
not hardware FLOPs, so recomputation does not count). A CPU has no entry: MFU is None there rather
than a number against a made-up peak. Measured ceilings (matmul FLOP/s, copy bandwidth) live beside
these in results/hardware/ and are the second denominator.
"""

from __future__ import annotations

import re

# Sources: NVIDIA H100 datasheet (SXM5 989.4 TF, PCIe 756.5 TF, NVL 835 TF dense bf16),
# H200 datasheet (SXM 989 TF, NVL 835 TF), A100 datasheet (312 TF for SXM4 and PCIe).
# Order matters: the first substring found in the device name wins.
DATASHEET_PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIE", 756.5e12),
    ("H100 NVL", 835e12),
    ("H100", 989.4e12),
    ("H200 NVL", 835e12),
    ("H200", 989.4e12),
    ("A100", 312e12),
)


def peak_bf16_flops(device_name: str | None) -> float | None:
    """Datasheet dense bf16 FLOP/s for a device name as CUDA reports it; None if unknown or CPU."""
    if not device_name:
        return None
    name = device_name.upper()
    for key, peak in DATASHEET_PEAK_BF16_FLOPS:
        if key in name:
            return peak
    return None


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilization: flops_per_token * tokens_per_s / peak; None without a peak."""
    if peak_flops is None or peak_flops <= 0 or tokens_per_s is None:
        return None
    return flops_per_token * tokens_per_s / peak_flops


def slugify(name: str) -> str:
    """A device name as a file-name slug: `NVIDIA H200` -> `nvidia-h200`."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"
