"""Seed replicates in the MoE figures: the mean and spread of a paired difference over seeds.

Serves the standard "a finding is a difference larger than its noise" for core questions 3 and 5:
every MoE-minus-dense number the figures draw is computed per seed (an MoE run minus the dense run
of the same seed, so both share the data order and validation batches) and then summarised over
the seeds as the mean and the range [min, max]. A difference counts only when every seed agrees on
its sign (the range excludes zero) with at least two seeds; otherwise it is drawn hollow and worded
"no difference" (or "one seed" when there is nothing to compare). The range is the honest spread
for 2-3 seeds, where a standard error would be a guess.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

SEED_SUFFIX = re.compile(r"_seed\d+$")


def base_run_id(run_id: str) -> str:
    """The run id without its `_seed{n}` suffix: the same settings at every seed."""
    return SEED_SUFFIX.sub("", run_id)


def verdict(values: list[float]) -> str:
    """'lower' / 'higher' when every seed agrees on the sign, else 'no difference' ('one seed')."""
    if len(values) < 2:
        return "one seed"
    if max(values) < 0:
        return "lower"
    if min(values) > 0:
        return "higher"
    return "no difference"


def summarise(rows: Iterable[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Group per-seed rows (each with `delta`) by `keys`; per group the mean, min, max, the number
    of seeds, the verdict and whether the difference is beyond the seed spread."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for key, members in groups.items():
        deltas = [m["delta"] for m in members]
        v = verdict(deltas)
        out.append(
            {
                **dict(zip(keys, key, strict=True)),
                **{k: val for k, val in members[0].items() if k not in ("delta", "seed")},
                "delta": sum(deltas) / len(deltas),
                "delta_lo": min(deltas),
                "delta_hi": max(deltas),
                "seeds": len(deltas),
                "verdict": v,
                "beyond_spread": v in ("lower", "higher"),
            }
        )
    return out


def worded(delta: float, lo: float, hi: float, n: int, unit: str) -> str:
    """'-0.012 bits/byte (seeds -0.020 to -0.004, n=2)' or 'no difference (...)'."""
    spread = f"seeds {lo:+.3f} to {hi:+.3f}, n={n}"
    v = verdict([lo, hi] if n >= 2 else [delta])
    if v == "no difference":
        return f"no difference (mean {delta:+.3f} {unit}, {spread})"
    if v == "one seed":
        return f"{delta:+.3f} {unit} (one seed: no spread)"
    return f"{delta:+.3f} {unit} ({spread})"
