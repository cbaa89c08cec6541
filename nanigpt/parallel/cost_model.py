"""Alpha-beta cost of a collective: what a step's communication should cost before it is measured.

Serves core question 2 (at what cost). Each rank's time for a collective over n ranks on a ring is
`latency_steps * alpha + wire_bytes / beta` (Hockney's model; the ring algorithms as in Thakur,
Rabenseifner & Gropp 2005 and NCCL's "bus bandwidth" notes), with S the payload:

| op | wire bytes per rank | latency steps |
| --- | --- | --- |
| all_reduce (S = the buffer) | 2 (n-1)/n S | 2 (n-1) |
| reduce_scatter (S = the full input) | (n-1)/n S | n-1 |
| all_gather (S = the full output) | (n-1)/n S | n-1 |
| all_to_all (S = the input; uniform splits) | (n-1)/n S | n-1 |
| broadcast (S = the buffer; pipelined) | S | n-1 |

`alpha` (seconds per message) and `beta` (bytes per second a rank moves) come from `calibrate`,
which times all_reduce at two sizes on the group it will predict for, or from a named default.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


def wire_bytes(op: str, nbytes: int, n: int) -> float:
    """Bytes one rank sends on a ring for `op` with payload `nbytes` over `n` ranks."""
    if n <= 1:
        return 0.0
    if op == "all_reduce":
        return 2 * (n - 1) / n * nbytes
    if op in ("reduce_scatter", "all_gather", "all_to_all"):
        return (n - 1) / n * nbytes
    if op == "broadcast":
        return float(nbytes)
    raise ValueError(f"cost_model: unknown collective {op!r}")


def latency_steps(op: str, n: int) -> int:
    if n <= 1:
        return 0
    return 2 * (n - 1) if op == "all_reduce" else n - 1


@dataclass(frozen=True)
class LinkModel:
    alpha_s: float  # per-message latency
    beta_bytes_per_s: float  # bytes per second one rank moves
    source: str = "default"

    def time_s(self, op: str, nbytes: int, n: int, sent_bytes: float | None = None) -> float:
        """Predicted seconds; `sent_bytes` overrides the uniform wire bytes (uneven all_to_all)."""
        wb = wire_bytes(op, nbytes, n) if sent_bytes is None else sent_bytes
        return latency_steps(op, n) * self.alpha_s + wb / self.beta_bytes_per_s

    def as_dict(self) -> dict:
        return {
            "alpha_s": self.alpha_s,
            "beta_bytes_per_s": self.beta_bytes_per_s,
            "source": self.source,
        }


# Order-of-magnitude defaults, used only when no calibration ran: NVLink 4 (H100 SXM, 2 GPUs)
# reaches about 360 GB/s of NCCL bus bandwidth with ~10 us latency; gloo over loopback about 1 GB/s.
DEFAULTS = {
    "cuda": LinkModel(alpha_s=10e-6, beta_bytes_per_s=360e9, source="default:nvlink4"),
    "cpu": LinkModel(alpha_s=50e-6, beta_bytes_per_s=1e9, source="default:gloo-loopback"),
}


def calibrate(
    group=None,
    device: torch.device | str = "cpu",
    small: int = 1 << 10,
    large: int = 1 << 22,
    repeats: int = 5,
) -> LinkModel:
    """Fit alpha and beta from all_reduce times at two sizes on `group` (every rank must call).

    Two equations `t = 2(n-1) alpha + 2(n-1)/n S / beta` for S = small and large give both unknowns.
    Each time is the median over `repeats` after one warm-up, bracketed by device syncs.
    """
    device = torch.device(device)
    n = dist.get_world_size(group)
    if n <= 1:
        return DEFAULTS[device.type]

    def timed(nbytes: int) -> float:
        t = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
        times = []
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dist.barrier(group=group)
            start = time.perf_counter()
            dist.all_reduce(t, group=group)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                times.append(time.perf_counter() - start)
        # Every rank must agree on the fit: take the slowest rank's median.
        med = torch.tensor([sorted(times)[len(times) // 2]], dtype=torch.float64, device=device)
        dist.all_reduce(med, op=dist.ReduceOp.MAX, group=group)
        return float(med.item())

    t_small, t_large = timed(small), timed(large)
    wb_small, wb_large = wire_bytes("all_reduce", small, n), wire_bytes("all_reduce", large, n)
    inv_beta = max((t_large - t_small) / (wb_large - wb_small), 1e-15)
    alpha = max((t_small - wb_small * inv_beta) / latency_steps("all_reduce", n), 0.0)
    return LinkModel(alpha_s=alpha, beta_bytes_per_s=1.0 / inv_beta, source=f"calibrated:n={n}")
