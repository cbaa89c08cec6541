"""The budget advisor: for a compute budget, which model size and how many tokens, on which device?

Serves the project's guiding question, "for a given compute budget, what is the best way to spend
it?", from the scaling fits (`nanigpt.scaling.fit`, L(N, D) = E + A/N^alpha + B/D^beta, Chinchilla
approach 3, Hoffmann et al. 2022) and the throughput the runs measured:

- FLOP-optimal: minimise L(N, D) subject to C = F(N) D, F the counted training FLOPs per token as
  a fitted linear function of N (`FlopsPerToken`; under F = 6N this is Hoffmann et al. 2022 eq. 4,
  N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b, a = beta/(alpha+beta), b = alpha/(alpha+beta),
  G = (alpha A / (beta B))^(1/(alpha+beta))). N, D and the loss there carry 95% intervals: the
  percentiles of the same optimum under each bootstrap replicate of the fit.
- Wall-clock-optimal: the FLOP-optimal choice takes T = D_opt / S(N_opt) seconds on the device,
  S(N) the tokens per second measured per size; in the same T, minimise L(N, S(N) T) over N.
  Small models run at a lower share of the device's peak (launch- and memory-bound steps), so the
  wall-clock optimum moves to larger N and fewer FLOPs-efficient tokens than the FLOP optimum.
  S between measured sizes: log-log interpolation; below the smallest: that size's tokens/s (a
  launch-bound step costs no less for a smaller model); above the largest: that size's share of
  peak (MFU) held constant, S(N) = S(N_max) F(N_max) / F(N). Both extrapolations are flagged.

The fit's bootstrap replicates come from fits.json (`bootstrap_params`); a fits.json written
before they were kept is refitted from the runs table with the same settings.

CLI:
    python -m nanigpt.scaling.advise --flops 1e18 [--arch dense|moe] [--device NAME] \\
        [--fits results/scaling/fits.json] [--runs results/scaling/runs.parquet] \\
        [--law auto|free|fixed_floor] [--out advice.json] [--figure advice.svg]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy.optimize import minimize_scalar

from nanigpt.io import read_json, write_json_atomic
from nanigpt.scaling.fit import (
    FlopsPerToken,
    LawFit,
    LawParams,
    compute_optimal,
    fit_law,
    jsonable,
    law_from_entry,
    percentile_interval,
    point_groups,
)

LAW_NAMES = {"free": "free fit (E fitted)", "fixed_floor": "E fixed at the data's floor"}
# The wall-clock optimum is searched over N in [1, 1e16]: a grid this fine (0.9% a step), then a
# bounded scalar minimisation between the grid neighbours of the best point.
_WALL_GRID = np.geomspace(1.0, 1e16, 4001)


class AdviceError(ValueError):
    """A question the fits cannot answer: no such arch or law, no throughput on that device."""


# --- inputs -------------------------------------------------------------------------------------


def choose_law(entry: dict[str, Any], law: str) -> str:
    """`auto`: E fixed at the known floor when the fit has one (E does not move N_opt, but it
    decides the predicted loss, and the free fit's E is the least determined parameter), else free."""
    if law != "auto":
        return law
    fixed = entry.get("fixed_floor") or {}
    return "fixed_floor" if fixed and "error" not in fixed else "free"


def load_law(
    fits: dict[str, Any], arch: str, law: str, runs: pl.DataFrame | None = None
) -> tuple[LawFit, FlopsPerToken, dict[str, Any]]:
    """The arch's law with its bootstrap replicates, its FLOPs-per-token model and its entry."""
    entry = fits.get(arch)
    if entry is None:
        raise AdviceError(f"fits.json has no arch_kind {arch!r} (has: {', '.join(sorted(fits))})")
    if "error" in entry:
        raise AdviceError(f"the {arch} fit was refused: {entry['error']}")
    sub = entry if law == "free" else entry.get(law)
    if not sub or "error" in sub:
        raise AdviceError(f"fits.json[{arch!r}] has no {law!r} fit: {(sub or {}).get('error')}")
    fitted = law_from_entry(sub)
    if fitted.n_bootstrap == 0 and runs is not None:
        fitted = _refit(entry, law, runs)
    model = entry["flops_per_token_model"]
    fpt = FlopsPerToken(k=model["k"], c=model["c"], kind=model["kind"])
    return fitted, fpt, entry


def _refit(entry: dict[str, Any], law: str, runs: pl.DataFrame) -> LawFit:
    """The fit again with fits.json's own settings, for its bootstrap replicates."""
    rows = runs.filter(pl.col("run_id").is_in(entry["run_ids"])).sort("run_id")
    if rows.height != len(entry["run_ids"]):
        raise AdviceError(
            f"the runs table holds {rows.height} of the fit's {len(entry['run_ids'])} runs"
        )
    n = rows[entry["n_column"]].to_numpy().astype(float)
    d = rows["tokens_trained"].to_numpy().astype(float)
    floor = entry.get("floor_bpb") if law == "fixed_floor" else None
    return fit_law(
        n, d, rows[entry["loss_column"]].to_numpy().astype(float),
        bootstrap=int(entry.get("n_bootstrap") or 100), seed=int(entry.get("seed", 0)),
        ci_level=float(entry.get("ci_level", 0.95)), labels=rows["run_id"], floor=floor,
        groups=point_groups(n, d),
    )  # fmt: skip


@dataclass(frozen=True)
class Throughput:
    """Measured tokens/s per model size on one device, and the rule between and beyond them."""

    device: str
    n: np.ndarray  # sorted sizes (the fit's N)
    tokens_per_s: np.ndarray
    fpt: FlopsPerToken

    def __call__(self, n: Any) -> np.ndarray:
        n = np.asarray(n, dtype=float)
        # np.interp holds the end values outside the measured sizes: right below the smallest
        s = np.exp(np.interp(np.log(n), np.log(self.n), np.log(self.tokens_per_s)))
        top_flops = self.tokens_per_s[-1] * float(self.fpt(self.n[-1]))  # FLOP/s at the largest
        return np.where(n > self.n[-1], top_flops / self.fpt(n), s)

    def extrapolated(self, n: float) -> str | None:
        if n < self.n[0] * (1 - 1e-9):
            return f"N below the smallest measured size ({self.n[0]:.3g}): its tokens/s assumed"
        if n > self.n[-1] * (1 + 1e-9):
            return f"N above the largest measured size ({self.n[-1]:.3g}): its FLOP/s assumed"
        return None


def throughput(
    runs: pl.DataFrame, arch: str, n_column: str, device: str | None, fpt: FlopsPerToken
) -> Throughput:
    """Median tokens/s per size of the arch's runs on `device` (a case-insensitive substring of
    the runs' `device`; None: the one device the runs have)."""
    needed = {"arch_kind", "device", "tokens_per_s", n_column}
    missing = sorted(needed - set(runs.columns))
    if missing:
        raise AdviceError(f"the runs table lacks column(s) {missing} for the throughput")
    rows = runs.filter((pl.col("arch_kind") == arch) & pl.col("tokens_per_s").is_not_null())
    devices = sorted(set(rows["device"].drop_nulls().to_list()))
    if device is not None:
        match = [d for d in devices if device.lower() in d.lower()]
        if not match:
            raise AdviceError(
                f"no {arch} run measured on a device matching {device!r} "
                f"(devices: {', '.join(devices) or 'none'})"
            )
        if len(match) > 1:
            raise AdviceError(f"--device {device!r} matches several devices: {match}")
        devices = match
    if len(devices) != 1:
        raise AdviceError(
            f"the {arch} runs were measured on {len(devices)} devices ({', '.join(devices)}); "
            "name one with --device"
        )
    per_size = (
        rows.filter(pl.col("device") == devices[0])
        .group_by(n_column)
        .agg(pl.col("tokens_per_s").median())
        .sort(n_column)
    )
    n = per_size[n_column].to_numpy().astype(float)
    return Throughput(
        device=devices[0],
        n=n,
        tokens_per_s=per_size["tokens_per_s"].to_numpy().astype(float),
        fpt=fpt,
    )


# --- the two optima -----------------------------------------------------------------------------


def flop_optimal(params: LawParams, flops: float, fpt: FlopsPerToken) -> tuple[float, float, float]:
    n, d, loss = compute_optimal(params, [flops], fpt)
    return float(n[0]), float(d[0]), float(loss[0])


def wall_optimal(params: LawParams, seconds: float, tput: Throughput) -> tuple[float, float, float]:
    """N, D and loss of the best run that trains in `seconds` on the device: min over N of
    L(N, S(N) seconds)."""
    grid = _WALL_GRID
    loss = params.loss(grid, tput(grid) * seconds)
    i = int(np.nanargmin(loss))
    lo, hi = np.log(grid[max(i - 1, 0)]), np.log(grid[min(i + 1, len(grid) - 1)])

    def objective(x: float) -> float:
        n = math.exp(x)
        return float(params.loss(n, float(tput(n)) * seconds))

    best = minimize_scalar(objective, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    n = math.exp(best.x)
    d = float(tput(n)) * seconds
    return n, d, float(params.loss(n, d))


def _choice(n: float, d: float, loss: float, reps: list, level: float) -> dict[str, Any]:
    """One answer (N, D, loss) with the intervals of its bootstrap replicates' answers."""
    return {
        "n": n,
        "n_ci": percentile_interval([r[0] for r in reps], level),
        "d": d,
        "d_ci": percentile_interval([r[1] for r in reps], level),
        "tokens_per_param": d / n,
        "loss": loss,
        "loss_ci": percentile_interval([r[2] for r in reps], level),
    }


def advise_budget(
    law: LawFit, fpt: FlopsPerToken, flops: float, tput: Throughput | None
) -> dict[str, Any]:
    """The FLOP-optimal choice at `flops` and, with a throughput, the wall-clock-optimal one in
    the time the FLOP-optimal choice takes; each with its bootstrap interval."""
    level = law.ci_level
    n, d, loss = flop_optimal(law.params, flops, fpt)
    boot = law.bootstrap_params()
    reps = [flop_optimal(p, flops, fpt) for p in boot]
    out: dict[str, Any] = {"flops": flops, "flop_optimal": _choice(n, d, loss, reps, level)}
    if tput is None or not math.isfinite(n):
        return out
    seconds = d / float(tput(n))
    out["flop_optimal"]["wall_s"] = seconds
    out["flop_optimal"]["wall_s_ci"] = percentile_interval(
        [r[1] / float(tput(r[0])) for r in reps if math.isfinite(r[0])], level
    )
    out["flop_optimal"]["throughput_extrapolated"] = tput.extrapolated(n)
    wn, wd, wloss = wall_optimal(law.params, seconds, tput)
    wreps = [wall_optimal(p, seconds, tput) for p in boot]
    out["wall_optimal"] = {
        "wall_s": seconds,
        **_choice(wn, wd, wloss, wreps, level),
        "flops": float(fpt(wn)) * wd,
        "throughput_extrapolated": tput.extrapolated(wn),
        # loss(FLOP-optimal) - loss(wall-optimal) per bootstrap replicate, both at this T
        "loss_gain_ci": percentile_interval(
            [
                p.loss(r[0], r[1]) - p.loss(w[0], w[1])
                for p, r, w in zip(boot, reps, wreps, strict=True)
                if math.isfinite(r[0])
            ],
            level,
        ),
        "loss_gain": loss - wloss,
    }
    return out


def frontiers(
    law: LawFit, fpt: FlopsPerToken, tput: Throughput, flops_grid: np.ndarray
) -> list[dict[str, Any]]:
    """Both frontiers against wall time: per budget C, the FLOP-optimal choice's (T, loss, N) and
    the wall-clock-optimal (T, loss, N) at the same T."""
    rows = []
    for c in flops_grid:
        n, d, loss = flop_optimal(law.params, float(c), fpt)
        if not math.isfinite(n):
            continue
        seconds = d / float(tput(n))
        wn, wd, wloss = wall_optimal(law.params, seconds, tput)
        rows.append(
            {"frontier": "FLOP-optimal", "wall_s": seconds, "loss": loss, "n": n, "flops": c}
        )
        rows.append(
            {
                "frontier": "wall-clock-optimal",
                "wall_s": seconds,
                "loss": wloss,
                "n": wn,
                "flops": float(fpt(wn)) * wd,
            }
        )
    return rows


def advise(
    fits: dict[str, Any],
    budgets: Sequence[float],
    *,
    arch: str = "dense",
    law: str = "auto",
    runs: pl.DataFrame | None = None,
    device: str | None = None,
    frontier_points: int = 24,
) -> dict[str, Any]:
    """advice.json's content for one arch: every budget's two answers, the throughput table and
    both frontiers (with a runs table that has throughput)."""
    if not budgets or any(not (math.isfinite(c) and c > 0) for c in budgets):
        raise AdviceError(f"budgets must be finite FLOP counts > 0, got {list(budgets)}")
    if arch not in fits:
        raise AdviceError(f"fits.json has no arch_kind {arch!r} (has: {', '.join(sorted(fits))})")
    law_name = choose_law(fits[arch], law)
    fitted, fpt, entry = load_law(fits, arch, law_name, runs)
    tput = None
    if runs is not None:
        tput = throughput(runs, arch, entry["n_column"], device, fpt)
    elif device is not None:
        raise AdviceError("--device needs --runs (the runs' measured tokens/s)")
    out: dict[str, Any] = {
        "arch": arch,
        "law": law_name,
        "law_description": LAW_NAMES[law_name],
        "params": {p: getattr(fitted.params, p) for p in ("E", "A", "B", "alpha", "beta")},
        "n_bootstrap": fitted.n_bootstrap,
        "ci_level": fitted.ci_level,
        "n_column": entry["n_column"],
        "loss_unit": entry.get("loss_unit"),
        "fitted_n_range": entry["n_range"],
        "fitted_d_range": entry["d_range"],
        "flops_per_token_model": entry["flops_per_token_model"],
        "budgets": [advise_budget(fitted, fpt, float(c), tput) for c in budgets],
    }
    if tput is not None:
        out["device"] = tput.device
        out["throughput"] = [
            {"n": float(n), "tokens_per_s": float(s), "flop_per_s": float(s * f)}
            for n, s, f in zip(tput.n, tput.tokens_per_s, fpt(tput.n), strict=True)
        ]
        lo = min(min(budgets), float(fpt(tput.n[0])) * entry["d_range"][0])
        grid = np.geomspace(lo / 3, max(budgets) * 3, frontier_points)
        out["frontiers"] = frontiers(fitted, fpt, tput, grid)
    return out


# --- output -------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "?" if value is None or not math.isfinite(value) else f"{value:{spec}}"


def _ci(pair: list[float | None], spec: str = ".3g") -> str:
    return f"[{_fmt(pair[0], spec)}, {_fmt(pair[1], spec)}]"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    if seconds >= 60:
        return f"{seconds / 60:.3g} min"
    return f"{seconds:.3g} s"


def report(advice: dict[str, Any]) -> str:
    """The advice as text: one block per budget."""
    unit = advice.get("loss_unit") or ""
    lo_n, hi_n = advice["fitted_n_range"]
    lo_d, hi_d = advice["fitted_d_range"]
    lines = [
        f"{advice['arch']}: {advice['law_description']}; alpha {advice['params']['alpha']:.3f}, "
        f"beta {advice['params']['beta']:.3f}, E {advice['params']['E']:.4g} {unit}; fitted on "
        f"N {lo_n:.3g}-{hi_n:.3g}, D {lo_d:.3g}-{hi_d:.3g} ({advice['n_bootstrap']} bootstrap "
        f"replicates, {advice['ci_level']:.0%} intervals)"
    ]
    if "device" in advice:
        sizes = ", ".join(
            f"{t['n']:.3g}: {t['tokens_per_s']:.3g} tok/s" for t in advice["throughput"]
        )
        lines.append(f"throughput on {advice['device']} (median per size): {sizes}")
    for b in advice["budgets"]:
        f = b["flop_optimal"]
        lines.append(f"budget {b['flops']:.3g} FLOPs:")
        extra = ""
        if f["n"] > hi_n or f["d"] > hi_d:
            extra = f" (extrapolated {max(f['n'] / hi_n, f['d'] / hi_d):.3g}x past the runs)"
        wall = f", {_duration(f['wall_s'])}" if "wall_s" in f else ""
        lines.append(
            f"  FLOP-optimal:       N {_fmt(f['n'])} {_ci(f['n_ci'])}, D {_fmt(f['d'])} "
            f"{_ci(f['d_ci'])} ({f['tokens_per_param']:.3g} tokens/param), loss "
            f"{_fmt(f['loss'], '.4f')} {_ci(f['loss_ci'], '.4f')}{wall}{extra}"
        )
        w = b.get("wall_optimal")
        if w:
            lines.append(
                f"  wall-clock-optimal: N {_fmt(w['n'])} {_ci(w['n_ci'])}, D {_fmt(w['d'])} "
                f"{_ci(w['d_ci'])} ({w['tokens_per_param']:.3g} tokens/param), loss "
                f"{_fmt(w['loss'], '.4f')} {_ci(w['loss_ci'], '.4f')} in the same "
                f"{_duration(w['wall_s'])}, spending {w['flops']:.3g} FLOPs; gain "
                f"{_fmt(w['loss_gain'], '.4f')} {_ci(w['loss_gain_ci'], '.4f')}"
            )
            for note in {f.get("throughput_extrapolated"), w.get("throughput_extrapolated")}:
                if note:
                    lines.append(f"    throughput extrapolated: {note}")
    return "\n".join(lines)


def advice_chart(advice: dict[str, Any]):
    """Both frontiers against wall time on the device: loss (left) and the model size they choose
    (right); the asked budgets marked."""
    import altair as alt

    from nanigpt.plots import log_axis

    rows = advice["frontiers"]
    marks = [
        {"frontier": name, "wall_s": b[key]["wall_s"], "loss": b[key]["loss"], "n": b[key]["n"]}
        for b in advice["budgets"]
        for key, name in (("flop_optimal", "FLOP-optimal"), ("wall_optimal", "wall-clock-optimal"))
        if key in b
    ]
    walls = [r["wall_s"] for r in rows]
    x = alt.X("wall_s:Q", scale=alt.Scale(type="log"), axis=log_axis(walls, "wall time (s)"))
    colour = alt.Color("frontier:N", title="allocation")
    unit = advice.get("loss_unit") or ""
    base = alt.Chart(alt.Data(values=rows))
    marked = alt.Chart(alt.Data(values=marks))
    loss = alt.layer(
        base.mark_line().encode(
            x=x, y=alt.Y("loss:Q", title=f"predicted loss ({unit})", scale=alt.Scale(zero=False)),
            color=colour,
        ),
        marked.mark_point(size=90, filled=True).encode(x=x, y="loss:Q", color=colour),
    ).properties(width=300, height=260, title="loss in a wall-time budget")  # fmt: skip
    ns = [r["n"] for r in rows]
    size = alt.layer(
        base.mark_line().encode(
            x=x,
            y=alt.Y("n:Q", scale=alt.Scale(type="log"), axis=log_axis(ns, "model size N")),
            color=colour,
        ),
        marked.mark_point(size=90, filled=True).encode(x=x, y="n:Q", color=colour),
    ).properties(width=300, height=260, title="the size each allocation picks")
    budgets = ", ".join(f"{b['flops']:.3g}" for b in advice["budgets"])
    return alt.hconcat(loss, size).properties(
        title=alt.TitleParams(
            f"Budget advisor ({advice['arch']}, {advice['law_description']}) on "
            f"{advice.get('device', '?')}",
            subtitle=[
                "FLOP-optimal: min loss at C = F(N) D; wall-clock-optimal: min loss in the "
                "same wall time at the measured tokens/s per size",
                f"points: the asked budgets ({budgets} FLOPs)",
            ],
            anchor="start",
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.scaling.advise", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--flops", type=float, nargs="+", required=True, help="compute budget(s)")
    parser.add_argument("--arch", default="dense", help="arch_kind of the fit (dense, moe)")
    parser.add_argument("--device", default=None, help="device name (substring) of the runs")
    parser.add_argument("--fits", default="results/scaling/fits.json")
    parser.add_argument("--runs", default="results/scaling/runs.parquet")
    parser.add_argument("--no-runs", action="store_true", help="FLOP-optimal answer only")
    parser.add_argument("--law", choices=["auto", "free", "fixed_floor"], default="auto")
    parser.add_argument("--out", default=None, help="advice.json to write")
    parser.add_argument("--figure", default=None, help="SVG of both frontiers")
    args = parser.parse_args(argv)
    try:
        fits = read_json(args.fits, "fits")
        runs = None
        if not args.no_runs:
            if not Path(args.runs).is_file():
                raise FileNotFoundError(f"runs table not found: {args.runs} (or pass --no-runs)")
            runs = pl.read_parquet(args.runs)
        advice = advise(
            fits, args.flops, arch=args.arch, law=args.law, runs=runs, device=args.device
        )
        if args.figure and "frontiers" not in advice:
            raise AdviceError("--figure needs the runs' throughput (drop --no-runs)")
    except (OSError, ValueError, KeyError, pl.exceptions.PolarsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report(advice))
    if args.out:
        write_json_atomic(args.out, jsonable(advice))
        print(f"wrote {args.out}")
    if args.figure:
        from nanigpt.plots import save_chart

        save_chart(advice_chart(advice), args.figure)
        print(f"wrote {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
