"""What a config's sweeps cost before they run: counted FLOPs and wall time at a given speed.

Serves core question 4's planning ("work out the compute first"): a GPU study must fit its device
time, so every run of a config is costed with the FLOPs the trainer will count
(`nanigpt.model.flops`, forward + backward matmuls per token, Kaplan et al. 2020 / PaLM appendix B)
and the steps it will take. A WSD sweep (`nanigpt.graph.jobs`) costs its stable runs to the last branch
point plus every cooldown, not the sum of its budgets; validation costs a forward pass (1/3 of a
training token's FLOPs) over `eval_batches` batches every `eval_every` steps and at the end. Wall
time is FLOPs / (mfu x peak): a target speed, not a measurement (small models on a GPU are
launch-bound far below it unless many runs share each kernel launch, which the step counts show).

CLI: `python -m nanigpt.scaling.cost CONFIG [--mfu 0.25] [--peak 788e12] [--sweeps S ...]`
prints one row per (sweep, arch, size) and the totals; exit 2 on a bad config.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any

from nanigpt.graph.config import ConfigError, load_config, resolve_runs
from nanigpt.graph.jobs import is_wsd_run, plan_wsd_jobs
from nanigpt.model.flops import count
from nanigpt.training.config import branch_step_of, tokens_per_step


def _per_step(run: dict[str, Any]) -> int:
    return tokens_per_step(run["training"])


def _eval_tokens(run: dict[str, Any], steps: int) -> int:
    t = run["training"]
    evals = steps // t["eval_every"] + 1
    return evals * t["eval_batches"] * t["seq_len"] * t["batch_size"]


def run_costs(config: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per training process unit: a WSD stable run with its cooldowns, or a plain run;
    each with its sweep (the first that lists it), arch, size, seed, steps and FLOPs."""
    runs = resolve_runs(config)
    rows = []
    for job in plan_wsd_jobs(runs).values():
        for stable in job["stables"]:
            run = stable["run"]
            per_step = _per_step(run)
            steps = run["tokens"] // per_step
            for branch in stable["branches"]:
                steps += math.ceil(branch["tokens"] / per_step) - branch_step_of(branch)
            first = runs[stable["branches"][0]["run_id"]]
            rows.append(_row(first, steps, per_step, [b["tokens"] for b in stable["branches"]]))
    for run in runs.values():
        if not is_wsd_run(run):
            per_step = _per_step(run)
            rows.append(_row(run, math.ceil(run["tokens"] / per_step), per_step, [run["tokens"]]))
    return rows


def _row(run: dict[str, Any], steps: int, per_step: int, budgets: list[int]) -> dict[str, Any]:
    acc = count(run["model"])
    tokens = steps * per_step
    return {
        "sweep": run["sweeps"][0],
        "arch": run["arch"],
        "size": run["size"],
        "seed": run["seed"],
        "lr": run["training"]["lr"],
        "n": acc.params.non_embedding_active,
        "flops_per_token": acc.train_flops_per_token,
        "batch_tokens": per_step,
        "steps": steps,
        "tokens": tokens,
        "budgets": budgets,
        "train_flops": acc.train_flops_per_token * tokens,
        "eval_flops": acc.train_flops_per_token / 3 * _eval_tokens(run, steps),
    }


def table(rows: list[dict[str, Any]], flop_per_s: float) -> list[dict[str, Any]]:
    """Rows grouped by (sweep, arch, size): processes, steps, FLOPs and wall time summed."""
    groups: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (r["sweep"], r["arch"], r["size"])
        g = groups.setdefault(
            key,
            {**{k: r[k] for k in ("sweep", "arch", "size", "n", "flops_per_token")},
             "batch_tokens": r["batch_tokens"], "units": 0, "steps": 0, "flops": 0.0,
             "budgets": sorted(set(r["budgets"])), "lrs": set()},
        )  # fmt: skip
        g["units"] += 1
        g["steps"] += r["steps"]
        g["flops"] += r["train_flops"] + r["eval_flops"]
        g["budgets"] = sorted(set(g["budgets"]) | set(r["budgets"]))
        g["lrs"].add(r["lr"])
    out = []
    for g in groups.values():
        g["lrs"] = len(g["lrs"])
        g["tokens_per_param"] = [min(g["budgets"]) / g["n"], max(g["budgets"]) / g["n"]]
        g["wall_s"] = g["flops"] / flop_per_s
        out.append(g)
    return sorted(out, key=lambda g: (g["sweep"], g["arch"], g["n"]))


def held_out_ratio(config: dict[str, Any]) -> dict[str, float]:
    """Per arch: the held-out runs' largest compute over the fitted sweep's largest run."""
    fitted, held = config["scaling"]["sweep"], config["scaling"].get("held_out")
    out = {}
    if not held:
        return out
    runs = resolve_runs(config)
    by_arch: dict[str, dict[str, float]] = {}
    for run in runs.values():
        flops = count(run["model"]).train_flops_per_token * run["tokens"]
        for role, sweep in (("fitted", fitted), ("held", held)):
            if sweep in run["sweeps"]:
                slot = by_arch.setdefault(run["arch"], {"fitted": 0.0, "held": 0.0})
                slot[role] = max(slot[role], flops)
    for arch, v in by_arch.items():
        if v["fitted"] and v["held"]:
            out[arch] = v["held"] / v["fitted"]
    return out


def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def render(groups: list[dict[str, Any]], ratios: dict[str, float], flop_per_s: float) -> str:
    header = (
        f"{'sweep':<18}{'arch':<7}{'size':<6}{'N':>7}{'F/token':>9}{'batch':>7}{'budgets':>14}"
        f"{'tok/param':>14}{'units':>6}{'lrs':>4}{'steps':>8}{'FLOPs':>10}{'wall':>8}"
    )
    lines = [header, "-" * len(header)]
    totals: dict[str, list[float]] = {}
    for g in groups:
        budgets = f"{_si(g['budgets'][0])}-{_si(g['budgets'][-1])}"
        tpp = f"{g['tokens_per_param'][0]:.3g}-{g['tokens_per_param'][1]:.4g}"
        lines.append(
            f"{g['sweep']:<18}{g['arch']:<7}{g['size']:<6}{_si(g['n']):>7}"
            f"{_si(g['flops_per_token']):>9}{_si(g['batch_tokens']):>7}{budgets:>14}{tpp:>14}"
            f"{g['units']:>6}{g['lrs']:>4}{g['steps']:>8}{g['flops']:>10.3g}{g['wall_s']:>7.0f}s"
        )
        t = totals.setdefault(g["sweep"], [0.0, 0.0])
        t[0] += g["flops"]
        t[1] += g["steps"]
    lines.append("-" * len(header))
    for sweep, (flops, steps) in totals.items():
        lines.append(
            f"{sweep:<18} {flops:.3g} FLOPs, {steps:.0f} steps, {flops / flop_per_s:.0f} s"
        )
    total = sum(t[0] for t in totals.values())
    lines.append(
        f"{'total':<18} {total:.3g} FLOPs: {total / flop_per_s:.0f} s = "
        f"{total / flop_per_s / 60:.1f} min at {flop_per_s:.3g} FLOP/s"
    )
    for arch, ratio in ratios.items():
        lines.append(f"held-out {arch}: {ratio:.1f}x the largest fitted run's compute")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.scaling.cost", description=__doc__.split("\n")[0]
    )
    parser.add_argument("config", help="YAML config")
    parser.add_argument("--mfu", type=float, default=0.25, help="share of peak (default 0.25)")
    parser.add_argument("--peak", type=float, default=788e12, help="peak FLOP/s (H200 bf16)")
    parser.add_argument("--sweeps", nargs="*", default=None, help="only these sweeps")
    args = parser.parse_args(argv)
    if not (0 < args.mfu <= 1 and args.peak > 0):
        print(f"error: --mfu {args.mfu} must be in (0, 1] and --peak > 0", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = run_costs(config)
    if args.sweeps:
        unknown = sorted(set(args.sweeps) - set(config["sweeps"]))
        if unknown:
            print(f"error: unknown sweep(s) {unknown}", file=sys.stderr)
            return 2
        rows = [r for r in rows if r["sweep"] in args.sweeps]
    flop_per_s = args.mfu * args.peak
    print(render(table(rows, flop_per_s), held_out_ratio(config), flop_per_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
