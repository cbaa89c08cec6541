"""Learning-rate schedules, and where a warmup-stable-decay (WSD) run branches its cooldowns.

Serves core question 4 (scaling laws that are determined): with WSD one stable-phase run per
(dataset, arch, size, seed) serves every token budget, each budget's result being a short cooldown
branched from the stable run's checkpoint, so B budgets cost about the largest budget plus the
cooldowns instead of the sum of all budgets. Hu et al. 2024 (MiniCPM, arXiv 2404.06395) introduced
WSD; Hägele et al. 2024 ("Scaling Laws and Compute-Optimal Training Beyond Fixed Training
Durations", arXiv 2405.18392) show that a linear cooldown over 10-20% of the steps matches a cosine
run of the same length, and use exactly these branches for scaling-law sweeps.

`lr_at` is a pure function of the step, so a run resumed from a checkpoint, or a cooldown branched
from the stable run, sees the same learning rate at each step as a run trained straight through.
"""

from __future__ import annotations

import math

DEFAULT_WSD_DECAY_FRAC = 0.2  # WSD: last 20% of steps decay (Hagele et al. 2024 use 10-20%)
SCHEDULES = ("cosine", "wsd", "constant")


def decay_steps(total_steps: int, warmup_steps: int, decay_frac: float) -> int:
    """Steps of a WSD run's linear cooldown: `decay_frac` of the run, at least 1, after warmup."""
    return max(1, min(total_steps - warmup_steps, round(decay_frac * total_steps)))


def branch_step(total_steps: int, warmup_steps: int, decay_frac: float) -> int:
    """The step at which a WSD run of `total_steps` leaves the stable phase: its cooldown branches
    from the stable run's checkpoint after this many steps."""
    return total_steps - decay_steps(total_steps, warmup_steps, decay_frac)


def lr_at(
    step: int,
    total_steps: int,
    *,
    lr: float,
    min_lr_frac: float,
    warmup_steps: int,
    schedule: str,
    decay_frac: float = DEFAULT_WSD_DECAY_FRAC,
) -> float:
    """Learning rate of 0-based `step` of `total_steps`.

    Linear warmup over `warmup_steps` (step 0 gets lr/warmup_steps), then
    - cosine: half a cosine from lr to lr*min_lr_frac, reached at the last step;
    - wsd (warmup-stable-decay): constant lr, then a linear decay to lr*min_lr_frac over the last
      `decay_steps(...)` steps;
    - constant: lr to the end (the stable phase that WSD cooldowns branch from).
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    min_lr = lr * min_lr_frac
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps + 1) / span)
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    if schedule == "wsd":
        span = decay_steps(total_steps, warmup_steps, decay_frac)
        decay_start = total_steps - span
        if step < decay_start:
            return lr
        progress = min(1.0, (step - decay_start + 1) / span)
        return lr + (min_lr - lr) * progress
    if schedule == "constant":
        return lr
    raise ValueError(f"unknown schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
