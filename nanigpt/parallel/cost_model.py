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
which times all_reduce over a range of sizes on the group it will predict for, or from a named default.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
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
    points: tuple[tuple[int, float], ...] = ()  # (all_reduce bytes, seconds) it was fitted to

    def time_s(self, op: str, nbytes: int, n: int, sent_bytes: float | None = None) -> float:
        """Predicted seconds; `sent_bytes` overrides the uniform wire bytes (uneven all_to_all)."""
        wb = wire_bytes(op, nbytes, n) if sent_bytes is None else sent_bytes
        return latency_steps(op, n) * self.alpha_s + wb / self.beta_bytes_per_s

    def as_dict(self) -> dict:
        out = {
            "alpha_s": self.alpha_s,
            "beta_bytes_per_s": self.beta_bytes_per_s,
            "source": self.source,
        }
        if self.points:
            out["all_reduce_points"] = [list(p) for p in self.points]
        return out


# Order-of-magnitude defaults, used only when no calibration ran: NVLink 4 (H100 SXM, 2 GPUs)
# reaches about 360 GB/s of NCCL bus bandwidth with ~10 us latency; gloo over loopback about 1 GB/s.
DEFAULTS = {
    "cuda": LinkModel(alpha_s=10e-6, beta_bytes_per_s=360e9, source="default:nvlink4"),
    "cpu": LinkModel(alpha_s=50e-6, beta_bytes_per_s=1e9, source="default:gloo-loopback"),
}


def fit_alpha_beta(
    steps: list[float], wire: list[float], times: list[float]
) -> tuple[float, float]:
    """(alpha, 1/beta) >= 0 minimising the relative error of `t = steps * alpha + wire / beta`.

    Each equation is divided by its own time, so small messages pin alpha and large ones beta. A
    negative coefficient is clamped to 0 and the other refitted alone; a bandwidth term under 0.1%
    of the largest time is reported as 0 (unmeasured), never as a near-infinite bandwidth."""
    a = np.column_stack([steps, wire]).astype(np.float64)
    t = np.asarray(times, dtype=np.float64)
    if len(t) < 2 or np.any(t <= 0):
        raise ValueError(f"fit_alpha_beta: need >= 2 positive times, got {list(times)}")
    w = 1.0 / t
    coef = np.linalg.lstsq(a * w[:, None], t * w, rcond=None)[0]
    if coef[0] < 0 or coef[1] <= 0:
        # one-parameter fits: bandwidth only, or latency only
        inv_beta = float(np.sum(a[:, 1] * w * w * t) / max(np.sum((a[:, 1] * w) ** 2), 1e-300))
        alpha = float(np.sum(a[:, 0] * w * w * t) / max(np.sum((a[:, 0] * w) ** 2), 1e-300))
        coef = np.array([0.0, inv_beta]) if coef[0] < 0 and inv_beta > 0 else np.array([alpha, 0.0])
    if coef[1] * a[:, 1].max() < 1e-3 * t.max():  # bandwidth term unmeasurable at these sizes
        coef[1] = 0.0
    return float(coef[0]), float(coef[1])


# Payload sizes calibration times all_reduce at: a latency-bound end and a bandwidth-bound end.
CALIBRATION_SIZES = {
    "cuda": [1 << 12, 1 << 16, 1 << 20, 1 << 24, 1 << 26, 1 << 28],
    "cpu": [1 << 10, 1 << 14, 1 << 18, 1 << 22],
}


def calibrate(
    group=None,
    device: torch.device | str = "cpu",
    sizes: list[int] | None = None,
    repeats: int = 5,
    inner: int = 4,
) -> LinkModel:
    """Fit alpha and beta from all_reduce times over a range of sizes on `group` (every rank calls).

    Each point is the median over `repeats` of `inner` back-to-back all_reduces bracketed by device
    syncs (one launch's host overhead is spread over `inner` ops), after one warm-up; every rank
    takes the slowest rank's median so all agree. `fit_alpha_beta` then fits
    `t = 2(n-1) alpha + 2(n-1)/n S / beta` to all points; the points are kept in the model.
    """
    device = torch.device(device)
    n = dist.get_world_size(group)
    if n <= 1:
        return DEFAULTS[device.type]
    sizes = sizes or CALIBRATION_SIZES[device.type]

    def timed(nbytes: int) -> float:
        t = torch.ones(max(nbytes // 4, 1), dtype=torch.float32, device=device)
        times = []
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dist.barrier(group=group)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(inner):
                dist.all_reduce(t, group=group)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                times.append((time.perf_counter() - start) / inner)
        med = torch.tensor([sorted(times)[len(times) // 2]], dtype=torch.float64, device=device)
        dist.all_reduce(med, op=dist.ReduceOp.MAX, group=group)
        return float(med.item())

    times = [timed(s) for s in sizes]
    alpha, inv_beta = fit_alpha_beta(
        [latency_steps("all_reduce", n)] * len(sizes),
        [wire_bytes("all_reduce", s, n) for s in sizes],
        times,
    )
    unmeasured = inv_beta <= 0  # then the named default bandwidth stands in, and says so
    beta = DEFAULTS[device.type].beta_bytes_per_s if unmeasured else 1.0 / inv_beta
    return LinkModel(
        alpha_s=alpha,
        beta_bytes_per_s=beta,
        source=f"calibrated:n={n}" + (" (beta: default)" if unmeasured else ""),
        points=tuple((int(s), float(t)) for s, t in zip(sizes, times, strict=True)),
    )
