"""Pre-registered predictions: the fit forecasts held-out runs before they train; a verdict after.

Serves core question 4 (how far can a scaling law be trusted beyond the runs it saw?) and the
contract "a prediction comes before the run it predicts". No fit of this project had been checked
against a run it did not see; the anchors for what to expect: Gadre et al. 2024 (arXiv 2403.08540)
predicted runs 300x larger in compute to 0.7% in loss, Choshen et al. 2024 (arXiv 2410.11840)
find about 4% absolute relative error the best typically obtained, and seeds alone move loss by up
to 3.5%.

The pieces, in the order the graph runs them:
- planning (torch-free, imported by the Snakefile): `held_out_points(config)` gives each run of the
  sweep named by `scaling.held_out` with the N and D the fit will be asked about, counted by
  `nanigpt.model.flops` before the run exists (D = whole steps of tokens, as the trainer rounds);
  the training job of any held-out run lists `results/scaling/prediction.json` among its inputs
  (`PREDICTION`), so the graph itself orders prediction before training.
- `predict`: fits.json (the fit of `scaling.sweep`, which holds no held-out run) -> prediction.json:
  per held-out run and per law (the free five-parameter fit, and E fixed at the data's known floor
  where there is one), the law's loss L(N, D) = E + A/N^alpha + B/D^beta (Chinchilla approach 3,
  Hoffmann et al. 2022), the 95% percentile interval of the law's value over the fit's bootstrap
  replicates (Besiroglu et al. 2024's bootstrap over runs, seed replicates drawn together), and a
  wider interval that adds one run's seed noise: log L_replicate + sigma z, z standard normal,
  sigma the seed spread of the fitted runs' log-loss (`nanigpt.scaling.design.seed_noise`; null
  when no fitted point has two seeds).
- `check`: prediction.json + the held-out runs' summaries -> prediction_check.json (per held-out
  point: the seed-mean loss against each law's prediction, relative error, inside which interval,
  and issue 29's bar: within 1% and inside the bootstrap interval) and a figure.

CLI:
    python -m nanigpt.scaling.predict predict --fits fits.json --runs runs.parquet \\
        --held-out JSON_OR_@PATH --out prediction.json
    python -m nanigpt.scaling.predict check --prediction prediction.json \\
        --out prediction_check.json --figure prediction_check.svg SUMMARY_JSON...
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

PREDICTION = "results/scaling/prediction.json"
LAWS = ("free", "fixed_floor")
WITHIN = 0.01  # issue 29's bar: the held-out loss within 1% of the prediction
NOISE_DRAWS = 50  # seed-noise draws per bootstrap replicate (the noise-inclusive interval)
# What the trainer and the fit call N, by the fit's `n_column` (nanigpt.model.flops.Params).
_PARAMS_FIELD = {
    "params_non_embedding_active": "non_embedding_active",
    "params_active": "active",
    "params_total": "total",
    "params_non_embedding_total": "non_embedding_total",
}


# --- planning (torch-free) ----------------------------------------------------------------------


class HeldOutError(ValueError):
    """A held-out sweep that cannot be predicted first (it shares runs with the fitted sweep)."""


def held_out_run_ids(config: dict, runs: dict[str, dict]) -> list[str]:
    """The run ids of the sweep `scaling.held_out` (none when it is not set).

    Refused when a held-out run is also a run of the fitted sweep `scaling.sweep` (the fit would
    need the run that waits for the fit), or when the held-out sweep sets `grouped: true` (its runs
    would share a training job with other sweeps' runs)."""
    name = config["scaling"].get("held_out")
    if not name:
        return []
    if name not in config["sweeps"]:
        raise HeldOutError(
            f"scaling.held_out: unknown sweep '{name}' (defined: {', '.join(config['sweeps'])})"
        )
    fitted = config["scaling"]["sweep"]
    held = [rid for rid, run in runs.items() if name in run["sweeps"]]
    shared = sorted(rid for rid in held if fitted in runs[rid]["sweeps"])
    if shared:
        raise HeldOutError(
            f"scaling.held_out: sweep '{name}' shares run(s) {shared[:3]} with the fitted sweep "
            f"'{fitted}': a held-out run must be one the fit does not see"
        )
    if config["sweeps"][name].get("grouped"):
        raise HeldOutError(
            f"scaling.held_out: sweep '{name}' sets 'grouped: true'; a held-out sweep trains in "
            f"jobs of its own (drop 'grouped')"
        )
    return held


def trained_tokens(run: dict) -> int:
    """The tokens a run trains: whole steps of `seq_len x batch_size x grad_accum` (the trainer)."""
    t = run["training"]
    per_step = t["seq_len"] * t["batch_size"] * t.get("grad_accum", 1)
    return math.ceil(run["tokens"] / per_step) * per_step


def held_out_points(config: dict, runs: dict[str, dict]) -> list[dict[str, Any]]:
    """Each held-out run with the (N, D) the fit is asked about, counted before it trains."""
    from nanigpt.model.flops import count

    n_column = config["scaling"].get("n_column", "params_non_embedding_active")
    points = []
    for rid in held_out_run_ids(config, runs):
        run = runs[rid]
        acc = count(run["model"])
        if n_column in _PARAMS_FIELD:
            n = getattr(acc.params, _PARAMS_FIELD[n_column])
        else:  # flops_per_token_non_embedding (DeepSeek's M)
            train = acc.train_by_component
            n = acc.train_flops_per_token - train["lm_head"] - train["embedding"]
        d = trained_tokens(run)
        points.append(
            {
                "run_id": rid,
                "arch_kind": run["arch_kind"],
                "size": run["size"],
                "seed": run["seed"],
                "n": n,
                "d": d,
                "flops": acc.train_flops_per_token * d,
            }
        )
    return points


def gate(held_out: Iterable[str], run_ids: Iterable[str]) -> list[str]:
    """The prediction file when any of `run_ids` is held out: a training job's extra input."""
    return [PREDICTION] if set(held_out).intersection(run_ids) else []


def held_out_gate_for_plan(
    config: dict, runs: dict[str, dict], prediction: str | Path | None
) -> tuple[list[str], str | None]:
    """The graph's order for a plan made without Snakemake (scripts/gpu_session.py): the run ids
    to plan, and the prediction's sha256. Without a prediction file the held-out runs are left
    out; with one, it must predict every held-out run."""
    import hashlib

    held = set(held_out_run_ids(config, runs))
    if not held:
        return list(runs), None
    if prediction is None:
        print(
            f"left out {len(held)} held-out run(s) of '{config['scaling']['held_out']}': plan "
            f"them with --prediction {PREDICTION} once the fit has predicted them",
            file=sys.stderr,
        )
        return [rid for rid in runs if rid not in held], None
    data = Path(prediction).read_bytes()
    predicted = {row["run_id"] for row in json.loads(data)["held_out"]}
    if held - predicted:
        raise HeldOutError(
            f"{prediction} does not predict held-out run(s) {sorted(held - predicted)[:3]}"
        )
    return list(runs), hashlib.sha256(data).hexdigest()


# --- predict ------------------------------------------------------------------------------------


def predict_point(law, n: float, d: float, sigma: float | None, seed: int = 0) -> dict[str, Any]:
    """One law's forecast at (N, D): the loss, the bootstrap interval of the law's value, and that
    interval widened by one run's seed noise (`sigma` in log-loss; None: not given)."""
    import numpy as np

    from nanigpt.scaling.fit import percentile_interval

    replicates = np.array([p.loss(n, d) for p in law.bootstrap_params()], dtype=float)
    out: dict[str, Any] = {
        "loss": float(law.params.loss(n, d)),
        "interval": percentile_interval(replicates, law.ci_level),
        "n_bootstrap": int(len(replicates)),
        "interval_with_noise": [None, None],
    }
    if sigma is not None and len(replicates):
        z = np.random.default_rng(seed).standard_normal((len(replicates), NOISE_DRAWS))
        noisy = replicates[:, None] * np.exp(sigma * z)
        out["interval_with_noise"] = percentile_interval(noisy.ravel(), law.ci_level)
    return out


def predict(
    fits: dict[str, Any], runs, points: Sequence[dict[str, Any]], seed: int = 0
) -> dict[str, Any]:
    """prediction.json's content: every held-out point forecast by every law the fit has."""
    import polars as pl

    from nanigpt.scaling.design import seed_noise
    from nanigpt.scaling.fit import FitError, law_from_entry

    held_out = []
    noise: dict[str, float | None] = {}
    for point in points:
        arch = point["arch_kind"]
        entry = fits.get(arch)
        row = {**point, "predictions": {}}
        if entry is None or "error" in entry:
            row["error"] = f"no fit for arch_kind {arch!r}: {(entry or {}).get('error')}"
            held_out.append(row)
            continue
        fitted = runs.filter(pl.col("run_id").is_in(entry["run_ids"]))
        if arch not in noise:
            try:
                noise[arch] = seed_noise(fitted, entry["loss_column"])["sigma"]
            except ValueError:
                noise[arch] = None  # no fitted point has two seeds
        largest = float(fitted["flops_total"].max())
        row["flops_over_largest_fitted"] = point["flops"] / largest
        row["n_over_largest_fitted"] = point["n"] / entry["n_range"][1]
        for name in LAWS:
            sub = entry if name == "free" else entry.get(name) or {"error": "not fitted"}
            try:
                law = law_from_entry(sub)
            except FitError as e:
                row["predictions"][name] = {"error": str(e)}
                continue
            row["predictions"][name] = predict_point(law, point["n"], point["d"], noise[arch], seed)
        held_out.append(row)
    any_entry = next((e for e in fits.values() if "error" not in e), {})
    return {
        "held_out": held_out,
        "seed_noise": noise,
        "loss_column": any_entry.get("loss_column"),
        "loss_unit": any_entry.get("loss_unit"),
        "n_column": any_entry.get("n_column"),
        "ci_level": any_entry.get("ci_level", 0.95),
        "fitted_runs": {a: e.get("run_ids", []) for a, e in fits.items() if "error" not in e},
        "bar": {"within": WITHIN, "inside": "interval"},
    }


# --- check --------------------------------------------------------------------------------------


def check(prediction: dict[str, Any], summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Prediction beside measurement, per held-out point (the runs of one arch, N and D: seeds).

    A summary whose N or D differs from what was predicted for its run is an error: the
    prediction was made for another run."""
    loss_column = prediction["loss_column"] or "final_val_bpb"
    n_column = prediction["n_column"] or "params_non_embedding_active"
    by_run = {row["run_id"]: row for row in prediction["held_out"]}
    measured: dict[tuple, list[dict[str, Any]]] = {}
    for summary in summaries:
        rid = summary["run_id"]
        if rid not in by_run:
            raise ValueError(f"run {rid!r} is not a held-out run of this prediction")
        row = by_run[rid]
        if summary[n_column] != row["n"] or summary["tokens_trained"] != row["d"]:
            raise ValueError(
                f"run {rid}: trained N={summary[n_column]}, D={summary['tokens_trained']}, but "
                f"the prediction was for N={row['n']}, D={row['d']}"
            )
        key = (row["arch_kind"], row["n"], row["d"])
        measured.setdefault(key, []).append({"run_id": rid, "loss": summary[loss_column]})
    missing = sorted(set(by_run) - {m["run_id"] for ms in measured.values() for m in ms})
    if missing:
        raise ValueError(f"no summary given for held-out run(s) {missing}")
    points = []
    for (arch, n, d), runs in sorted(measured.items()):
        first = by_run[runs[0]["run_id"]]
        losses = [r["loss"] for r in runs]
        mean = sum(losses) / len(losses)
        point: dict[str, Any] = {
            "arch_kind": arch,
            "size": first["size"],
            "n": n,
            "d": d,
            "flops": first["flops"],
            "flops_over_largest_fitted": first.get("flops_over_largest_fitted"),
            "runs": runs,
            "measured": mean,
            "measured_range": [min(losses), max(losses)],
            "laws": {},
        }
        for name, pred in first["predictions"].items():
            if "error" in pred:
                point["laws"][name] = {"error": pred["error"]}
                continue
            lo, hi = pred["interval"]
            nlo, nhi = pred["interval_with_noise"]
            rel = mean / pred["loss"] - 1
            inside = lo is not None and lo <= mean <= hi
            point["laws"][name] = {
                "predicted": pred["loss"],
                "interval": pred["interval"],
                "interval_with_noise": pred["interval_with_noise"],
                "relative_error": rel,
                "within_1pct": abs(rel) <= WITHIN,
                "inside_interval": bool(inside),
                "inside_interval_with_noise": None if nlo is None else bool(nlo <= mean <= nhi),
                "meets_bar": bool(abs(rel) <= WITHIN and inside),
            }
        points.append(point)
    return {
        "loss_column": loss_column,
        "loss_unit": prediction.get("loss_unit"),
        "bar": f"within {WITHIN:.0%} of the predicted loss and inside its bootstrap interval",
        "points": points,
    }


def point_label(point: dict[str, Any]) -> str:
    """`dense h6, N=1.31e+05, D=3.93e+05 (2.6x the largest fitted compute)`."""
    label = f"{point['arch_kind']} {point['size']}, N={point['n']:.3g}, D={point['d']:.3g}"
    ratio = point.get("flops_over_largest_fitted")
    return label + (f" ({ratio:.2g}x the largest fitted compute)" if ratio else "")


def check_chart(result: dict[str, Any]):
    """Each held-out point: every law's prediction with its intervals (thick: the law's bootstrap,
    thin: with one run's seed noise) beside the measured seeds and their mean."""
    import altair as alt

    rows, measured = [], []
    for p in result["points"]:
        label = point_label(p)
        for name, law in p["laws"].items():
            if "error" in law:
                continue
            nlo, nhi = law["interval_with_noise"]
            rows.append(
                {
                    "point": label,
                    "law": name,
                    "loss": law["predicted"],
                    "lo": law["interval"][0],
                    "hi": law["interval"][1],
                    "noise_lo": nlo if nlo is not None else law["interval"][0],
                    "noise_hi": nhi if nhi is not None else law["interval"][1],
                    "error": f"{law['relative_error']:+.2%}",
                }
            )
        measured += [{"point": label, "loss": r["loss"], "what": "a seed"} for r in p["runs"]]
        measured.append({"point": label, "loss": p["measured"], "what": "measured (seed mean)"})
    unit = result.get("loss_unit") or ""
    y = alt.Y("point:N", title=None, axis=alt.Axis(labelLimit=400))
    yoff = alt.YOffset("law:N")
    x_title = f"final validation loss ({unit})"
    colour = alt.Color("law:N", title="prediction (law)")
    base = alt.Chart(alt.Data(values=rows))
    wide = base.mark_rule(strokeWidth=1.5, opacity=0.6).encode(
        x=alt.X("noise_lo:Q", title=x_title, scale=alt.Scale(zero=False)),
        x2="noise_hi:Q",
        y=y,
        yOffset=yoff,
        color=colour,
    )
    narrow = base.mark_rule(strokeWidth=6).encode(
        x="lo:Q", x2="hi:Q", y=y, yOffset=yoff, color=colour
    )
    centre = base.mark_tick(color="black", thickness=2, size=14).encode(
        x="loss:Q", y=y, yOffset=yoff, tooltip=["law:N", "loss:Q", "lo:Q", "hi:Q", "error:N"]
    )
    meas = (
        alt.Chart(alt.Data(values=measured))
        .mark_point(size=90, filled=True)
        .encode(
            x="loss:Q",
            y=y,
            shape=alt.Shape("what:N", title="measured"),
            color=alt.value("black"),
            tooltip=["what:N", "loss:Q"],
        )
    )
    verdicts = [
        f"{point_label(p)}, {name}: {law['relative_error']:+.2%}, "
        f"{'inside' if law['inside_interval'] else 'outside'} the interval"
        for p in result["points"]
        for name, law in p["laws"].items()
        if "error" not in law
    ]
    return alt.layer(wide, narrow, centre, meas).properties(
        width=460,
        height=alt.Step(28),
        title=alt.TitleParams(
            "Pre-registered prediction against the held-out runs",
            subtitle=[
                "thick bar: 95% bootstrap interval of the fitted law; thin: with one run's seed "
                "noise; tick: the prediction",
                *verdicts[:6],
            ],
            anchor="start",
        ),
    )


# --- CLI ----------------------------------------------------------------------------------------


def _parse_points(text: str) -> list[dict[str, Any]]:
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    points = json.loads(text)
    if not isinstance(points, list) or not all(
        isinstance(p, dict) and {"run_id", "arch_kind", "n", "d", "flops"} <= set(p) for p in points
    ):
        raise ValueError("--held-out: expected a JSON list of {run_id, arch_kind, n, d, flops}")
    return points


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.scaling.predict", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_pred = sub.add_parser("predict", help="fits.json -> prediction.json for held-out runs")
    p_pred.add_argument("--fits", required=True)
    p_pred.add_argument("--runs", required=True, help="runs.parquet the fit was made from")
    p_pred.add_argument("--held-out", required=True, help="JSON list of points, or @path")
    p_pred.add_argument("--seed", type=int, default=0)
    p_pred.add_argument("--out", required=True)
    p_check = sub.add_parser(
        "check",
        help="prediction.json + held-out summaries -> verdict",
        fromfile_prefix_chars="@",  # `@LIST`: a file of arguments, one a line
    )
    p_check.add_argument("--prediction", required=True)
    p_check.add_argument("--out", required=True)
    p_check.add_argument("--figure", default=None, help="SVG of prediction beside measurement")
    p_check.add_argument("summaries", nargs="+", help="held-out summary.json files (or @LIST)")
    args = parser.parse_args(argv)

    import polars as pl

    from nanigpt.io import read_json, write_json_atomic
    from nanigpt.scaling.fit import jsonable

    try:
        if args.command == "predict":
            points = _parse_points(args.held_out)
            if not Path(args.runs).is_file():
                raise FileNotFoundError(f"runs table not found: {args.runs}")
            result = predict(
                read_json(args.fits, "fits"), pl.read_parquet(args.runs), points, args.seed
            )
        else:
            summaries = [read_json(p, "run summary") for p in args.summaries]
            result = check(read_json(args.prediction, "prediction"), summaries)
    except (OSError, ValueError, KeyError, pl.exceptions.PolarsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_json_atomic(args.out, jsonable(result))
    if args.command == "predict":
        for row in result["held_out"]:
            for name, pred in row["predictions"].items():
                if "error" in pred:
                    continue
                lo, hi = pred["interval"]
                print(
                    f"{row['run_id']} ({name}): {pred['loss']:.4f} [{lo:.4f}, {hi:.4f}] at "
                    f"{row['flops_over_largest_fitted']:.1f}x the largest fitted compute"
                )
    else:
        for p in result["points"]:
            for name, law in p["laws"].items():
                if "error" not in law:
                    print(
                        f"{point_label(p)} ({name}): measured {p['measured']:.4f}, "
                        f"predicted {law['predicted']:.4f} ({law['relative_error']:+.2%}), "
                        f"{'inside' if law['inside_interval'] else 'outside'} the interval"
                    )
        if args.figure:
            from nanigpt.plots import save_chart

            save_chart(check_chart(result), args.figure)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
