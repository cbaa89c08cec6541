"""Figures of expert specialization and of the MoE-dense crossover (Altair, SVG).

Serves core question 3 (when and why do MoEs win): what the experts learn about the known sources
of the synthetic mixture, how well the load is balanced as capacity varies, and where an MoE
overtakes the dense model as compute grows. Four figures, each a subcommand:

- `heatmap`: per MoE layer, the expert x source matrix of a run's final model, coloured by
  P(source | expert) (the share of an expert's tokens that each source wrote), titled with the
  normalised mutual information I(expert; source) / H(source) (`nanigpt.measure.specialization`).
- `mi`: normalised MI against training step for every analysed run (mixture-trained MoE and the
  single-source control), one line per run and layer, so one sees specialization emerge.
- `load`: load balance (coefficient of variation of per-expert load) and the dropped fraction
  against the capacity factor across a sweep's runs, one colour per expert count.
- `crossover`: validation loss of MoE minus dense against training compute. Points pair each MoE
  run with the dense run of the same width, depth and token budget; lines, where the runs allow a
  fit, are the differences of the compute-optimal frontiers of L(N, D) = E + A/N^alpha + B/D^beta
  fitted per architecture by `nanigpt.scaling.fit.fit_all` (Chinchilla approach 3), one per MoE
  arch (one expert count each in the `moe` sweep); the fits are written as fits.json-style JSON.

CLI: `python -m nanigpt.plots.moe heatmap --spec specialization.json --out heatmap.svg`
     `python -m nanigpt.plots.moe mi --spec A.json [B.json ...] --out mi_vs_step.svg`
     `python -m nanigpt.plots.moe load --spec A.json [B.json ...] --out load_vs_capacity.svg`
     `python -m nanigpt.plots.moe crossover --summaries results/runs/*/summary.json
      --out crossover.svg --fits-out crossover_fits.json [--loss final_val_bpb] [--bootstrap 20]`
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import altair as alt
import numpy as np
import polars as pl

from nanigpt.io import read_json, write_json_atomic
from nanigpt.plots import save_chart

DROPLESS = "dropless"


def _capacity_label(capacity_factor: float | None) -> str:
    return DROPLESS if capacity_factor is None else f"{capacity_factor:g}"


def _run_label(spec: dict[str, Any]) -> str:
    cf = _capacity_label(spec.get("capacity_factor"))
    return (
        f"{spec.get('run_id')} (E={spec.get('num_experts')}, k={spec.get('top_k')}, cf={cf}, "
        f"g={spec.get('granularity')})"
    )


def _experts_label(spec: dict[str, Any]) -> str:
    routed = spec.get("num_routed_experts", spec.get("num_experts"))
    granularity = spec.get("granularity") or 1
    return f"E={routed}" + (f" (g={granularity})" if granularity > 1 else "")


def _leading_int(label: str) -> tuple[int, str]:
    """Sort key of labels like 'E=16 (g=4)' or 'moeE8: E=8 k=1 ...': the first E=<int>, then text."""
    match = re.search(r"E=(\d+)", label)
    return (int(match.group(1)) if match else -1, label)


# --- expert x source heatmap ---------------------------------------------------------------------


def heatmap_chart(spec: dict[str, Any], which: str = "top1") -> alt.HConcatChart:
    """One expert x source panel per MoE layer of the final model."""
    final = spec["final"]
    panels = []
    for layer in final["layers"]:
        counts = np.asarray(layer[f"counts_{which}"], dtype=np.float64)
        per_expert = counts.sum(1, keepdims=True)
        share = np.divide(counts, per_expert, out=np.zeros_like(counts), where=per_expert > 0)
        rows = [
            {
                "expert": e,
                "source": s,
                "count": int(counts[e, s]),
                "share": float(share[e, s]),
                "expert_load": float(layer["load"][e]),
            }
            for e in range(counts.shape[0])
            for s in range(counts.shape[1])
        ]
        nmi = layer[f"normalized_mi_{which}"]
        nmi_text = f"{nmi:.3f}" if nmi is not None else "undefined (one source)"
        title = alt.TitleParams(
            f"layer {layer['layer']}",
            subtitle=[
                f"I(expert; source)/H(source) = {nmi_text}",
                f"load CV {layer['load_cv']:.2f}, dropped {layer['dropped_frac']:.1%}",
            ],
        )
        base = alt.Chart(alt.Data(values=rows)).encode(
            x=alt.X("source:O", title="source (ground truth)"),
            y=alt.Y("expert:O", title="expert"),
        )
        rect = base.mark_rect().encode(
            color=alt.Color(
                "share:Q",
                title="P(source | expert)",
                scale=alt.Scale(domain=[0, 1], scheme="blues"),
            ),
            tooltip=["expert:O", "source:O", "count:Q", "share:Q", "expert_load:Q"],
        )
        text = base.mark_text(fontSize=9).encode(
            text=alt.Text("count:Q", format=".2~s"),
            color=alt.condition("datum.share > 0.6", alt.value("white"), alt.value("black")),
        )
        size = 18 * counts.shape[1]
        panels.append(
            (rect + text).properties(
                width=max(120, size), height=max(80, 18 * counts.shape[0]), title=title
            )
        )
    choice = "first choice" if which == "top1" else "all k choices"
    return alt.hconcat(*panels).properties(
        title=alt.TitleParams(
            f"Expert x source: {spec['run_id']} (step {final['step']})",
            subtitle=[
                f"{_run_label(spec)}; counts of the router's {choice} over "
                f"{spec['tokens_analysed']} validation tokens of {Path(spec['val']).name}",
                "colour: share of each expert's tokens written by each source",
            ],
            anchor="start",
        )
    )


# --- normalised MI over training -------------------------------------------------------------------


def mi_rows(specs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for spec in specs:
        for entry in spec["over_training"]:
            for layer in entry["layers"]:
                rows.append(
                    {
                        "run": f"{spec['run_id']} ({spec.get('dataset')})",
                        "dataset": spec.get("dataset"),
                        "step": entry["step"],
                        "layer": f"layer {layer['layer']}",
                        "normalized_mi": layer["normalized_mi_top1"],
                        "mi_nats": layer["mi_top1_nats"],
                        "reason": layer["normalized_mi_reason"],
                    }
                )
    return rows


def mi_chart(specs: Sequence[dict[str, Any]]) -> alt.LayerChart:
    rows = mi_rows(specs)
    shown = [r for r in rows if r["normalized_mi"] is not None and r["step"] is not None]
    subtitle = [
        "normalised mutual information of the router's first choice and the token's true source, "
        "on the evaluation shard of each run",
        "0: routing ignores the source; 1: the expert determines the source",
    ]
    for run in sorted({r["run"] for r in rows} - {r["run"] for r in shown}):
        reason = next(r["reason"] for r in rows if r["run"] == run) or "no step recorded"
        subtitle.append(f"{run}: not drawn, {reason[:90]}")
    x = alt.X("step:Q", title="training step")
    y = alt.Y("normalized_mi:Q", title="I(expert; source) / H(source)", scale=alt.Scale(zero=True))
    colour = alt.Color("run:N", title="run (training data)")
    data = alt.Data(values=shown)
    line = (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(
            x=x,
            y=y,
            color=colour,
            strokeDash=alt.StrokeDash("layer:N", title="MoE layer"),
            tooltip=["run:N", "layer:N", "step:Q", "normalized_mi:Q", "mi_nats:Q"],
        )
    )
    return line.properties(
        width=560,
        height=340,
        title=alt.TitleParams(
            "Expert specialization over training: mixture vs single-source control",
            subtitle=subtitle,
            anchor="start",
        ),
    )


# --- load balance vs capacity factor ---------------------------------------------------------------


def load_rows(specs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for spec in specs:
        for layer in spec["final"]["layers"]:
            rows.append(
                {
                    "run_id": spec["run_id"],
                    "capacity": _capacity_label(spec.get("capacity_factor")),
                    "experts": _experts_label(spec),
                    "top_k": spec.get("top_k"),
                    "layer": layer["layer"],
                    "load_cv": layer["load_cv"],
                    "dropped_frac": layer["dropped_frac"],
                }
            )
    return rows


def load_chart(specs: Sequence[dict[str, Any]]) -> alt.HConcatChart:
    rows = load_rows(specs)
    numeric = sorted({r["capacity"] for r in rows if r["capacity"] != DROPLESS}, key=float)
    order = numeric + ([DROPLESS] if any(r["capacity"] == DROPLESS for r in rows) else [])
    x = alt.X("capacity:O", title="capacity factor", sort=order)
    experts = sorted({r["experts"] for r in rows}, key=_leading_int)
    colour = alt.Color("experts:N", title="routed experts", sort=experts)
    tooltip = ["run_id:N", "capacity:N", "experts:N", "top_k:Q", "layer:Q", "load_cv:Q"]
    tooltip.append("dropped_frac:Q")
    base = alt.Chart(alt.Data(values=rows)).encode(
        x=x, color=colour, shape=alt.Shape("top_k:N", title="top-k"), tooltip=tooltip
    )
    cv = base.mark_point(filled=True, size=70, opacity=0.8).encode(
        y=alt.Y("load_cv:Q", title="load coefficient of variation (0 = balanced)"),
        xOffset="experts:N",
    )
    dropped = base.mark_point(filled=True, size=70, opacity=0.8).encode(
        y=alt.Y("dropped_frac:Q", title="dropped assignments", axis=alt.Axis(format="%")),
        xOffset="experts:N",
    )
    return alt.hconcat(
        cv.properties(width=300, height=260), dropped.properties(width=300, height=260)
    ).properties(
        title=alt.TitleParams(
            "Load balance against capacity factor",
            subtitle=[
                "final model of each run, one point per MoE layer; load = share of router "
                "assignments per expert (before capacity) on validation tokens",
            ],
            anchor="start",
        )
    )


# --- crossover: loss difference MoE - dense vs compute ---------------------------------------------


def runs_table(summary_paths: Sequence[str | Path]) -> pl.DataFrame:
    """One row per run: its summary's flat keys plus the model settings from config.json."""
    rows = []
    for path in summary_paths:
        path = Path(path)
        summary = read_json(path, what="run summary")
        config_path = path.with_name("config.json")
        run = read_json(config_path, what="run config").get("run", {})
        model = run.get("model") or {}
        moe = model.get("moe") or {}
        rows.append(
            {
                "run_id": summary["run_id"],
                "arch": summary.get("arch", run.get("arch")),
                "arch_kind": summary["arch_kind"],
                "size": summary.get("size"),
                "n_layer": model.get("n_layer"),
                "d_model": model.get("d_model"),
                "mlp_ratio": float(model.get("mlp_ratio", 0.0)),
                "num_experts": moe.get("num_experts", 1),
                "top_k": moe.get("top_k", 1),
                "capacity_factor": moe.get("capacity_factor"),
                "granularity": moe.get("granularity", 1),
                "tokens_target": summary.get("tokens_target", run.get("tokens")),
                "tokens_trained": summary["tokens_trained"],
                "params_total": summary.get("params_total"),
                "params_active": summary.get("params_active"),
                "params_non_embedding_active": summary.get("params_non_embedding_active"),
                "params_non_embedding_total": summary.get("params_non_embedding_total"),
                "flops_per_token": summary.get("flops_per_token"),
                "flops_total": summary.get("flops_total"),
                "final_val_loss": summary.get("final_val_loss"),
                "final_val_bpb": summary.get("final_val_bpb"),
            }
        )
    return pl.DataFrame(rows, infer_schema_length=None)


def _arch_label(row: dict[str, Any]) -> str:
    if row["arch_kind"] == "dense":
        return "dense"
    cf = _capacity_label(row["capacity_factor"])
    return f"{row['arch']}: E={row['num_experts']} k={row['top_k']} cf={cf} g={row['granularity']}"


def paired_differences(table: pl.DataFrame, loss: str) -> list[dict[str, Any]]:
    """MoE loss minus the dense loss at the same depth, width and token budget."""
    dense = {
        (r["n_layer"], r["d_model"], r["tokens_target"]): r
        for r in table.filter(pl.col("arch_kind") == "dense").to_dicts()
    }
    rows = []
    for r in table.filter(pl.col("arch_kind") != "dense").to_dicts():
        partner = dense.get((r["n_layer"], r["d_model"], r["tokens_target"]))
        if partner is None or r[loss] is None or partner[loss] is None:
            continue
        rows.append(
            {
                "line": _arch_label(r),
                "run_id": r["run_id"],
                "dense_run_id": partner["run_id"],
                "flops": r["flops_total"],
                "delta": r[loss] - partner[loss],
                "active_over_dense_flops": r["flops_per_token"] / partner["flops_per_token"],
                "total_over_dense_params": r["params_total"] / partner["params_total"],
            }
        )
    return rows


def crossover_fits(table: pl.DataFrame, loss: str, bootstrap: int, seed: int = 0) -> dict[str, Any]:
    """fits.json-style fits, one per MoE arch (and dense), via `nanigpt.scaling.fit.fit_all`."""
    from nanigpt.scaling.fit import fit_all, jsonable

    labelled = table.with_columns(
        pl.Series("arch_kind", [_arch_label(r) for r in table.to_dicts()])
    )
    return jsonable(fit_all(labelled, loss_column=loss, bootstrap=bootstrap, seed=seed))


def frontier_differences(fits: dict[str, Any]) -> list[dict[str, Any]]:
    dense = fits.get("dense") or {}
    if "error" in dense or not dense.get("frontier_loss"):
        return []
    rows = []
    for label, entry in fits.items():
        if label == "dense" or "error" in entry:
            continue
        for c, a, b in zip(
            entry["frontier_flops"], entry["frontier_loss"], dense["frontier_loss"], strict=False
        ):
            if c is not None and a is not None and b is not None:
                rows.append({"line": label, "flops": c, "delta": a - b})
    return rows


def crossover_chart(
    table: pl.DataFrame, fits: dict[str, Any], loss: str = "final_val_bpb"
) -> alt.LayerChart:
    from nanigpt.scaling.fit import LOSS_UNITS

    points = paired_differences(table, loss)
    lines = frontier_differences(fits)
    if not points and not lines:
        raise ValueError(
            "no MoE run has a dense partner (same n_layer, d_model and tokens) and no fit "
            "succeeded: nothing to draw; the sweep needs dense runs beside its MoE runs"
        )
    unit = LOSS_UNITS.get(loss, "")
    x = alt.X(
        "flops:Q",
        title="training compute (FLOPs, counted, log scale)",
        scale=alt.Scale(type="log"),
        axis=alt.Axis(format="~e"),
    )
    y = alt.Y("delta:Q", title=f"loss MoE - dense ({unit}); below 0: MoE wins")
    order = sorted({r["line"] for r in points + lines}, key=_leading_int)
    colour = alt.Color("line:N", title="architecture", sort=order)
    layers = [alt.Chart(alt.Data(values=[{"delta": 0.0}])).mark_rule(color="black").encode(y=y)]
    if lines:
        layers.append(
            alt.Chart(alt.Data(values=lines))
            .mark_line(strokeWidth=2, clip=True)
            .encode(x=x, y=y, color=colour)
        )
    if points:
        layers.append(
            alt.Chart(alt.Data(values=points))
            .mark_point(filled=True, size=60, stroke="black", strokeWidth=0.4)
            .encode(
                x=x,
                y=y,
                color=colour,
                tooltip=[
                    "run_id:N",
                    "dense_run_id:N",
                    "delta:Q",
                    "active_over_dense_flops:Q",
                    "total_over_dense_params:Q",
                ],
            )
        )
    subtitle = [
        "points: each MoE run minus the dense run of the same depth, width and tokens; lines: "
        "difference of fitted compute-optimal frontiers (Chinchilla approach 3)",
    ]
    for label, entry in sorted(fits.items()):
        if label == "dense":
            if "error" in entry:
                subtitle.append(f"dense: fit refused, no lines: {entry['error'][:90]}")
            continue
        if "error" in entry:
            subtitle.append(f"{label}: fit refused ({entry['error'][:70]})")
            continue
        cross = (entry.get("crossover_vs_dense") or {}).get("flops")
        where = f"crosses dense at {cross:.2g} FLOPs" if cross else "no crossing in range"
        subtitle.append(f"{label}: {where}")
    return alt.layer(*layers).properties(
        width=600,
        height=380,
        title=alt.TitleParams(
            "Where MoE overtakes dense: loss difference against compute",
            subtitle=subtitle,
            anchor="start",
        ),
    )


# --- CLI ----------------------------------------------------------------------------------------


def _read_specs(paths: Sequence[str]) -> list[dict[str, Any]]:
    return [read_json(p, what="specialization file") for p in paths]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.plots.moe", description="MoE specialization and crossover figures."
    )
    sub = parser.add_subparsers(dest="figure", required=True)
    heat = sub.add_parser("heatmap", help="expert x source matrices per layer of one run")
    heat.add_argument("--spec", required=True, help="specialization.json of one run")
    heat.add_argument("--counts", choices=["top1", "all"], default="top1")
    heat.add_argument("--out", required=True)
    mi = sub.add_parser("mi", help="normalised MI vs training step")
    mi.add_argument("--spec", nargs="+", required=True, help="specialization.json files")
    mi.add_argument("--out", required=True)
    load = sub.add_parser("load", help="load CV and drops vs capacity factor")
    load.add_argument("--spec", nargs="+", required=True, help="specialization.json files")
    load.add_argument("--out", required=True)
    cross = sub.add_parser("crossover", help="loss MoE - dense vs compute")
    cross.add_argument("--summaries", nargs="+", required=True, help="summary.json of each run")
    cross.add_argument("--out", required=True)
    cross.add_argument("--fits-out", required=True, help="fits.json-style JSON to write")
    cross.add_argument(
        "--loss", default="final_val_bpb", choices=["final_val_bpb", "final_val_loss"]
    )
    cross.add_argument("--bootstrap", type=int, default=20)
    cross.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.figure == "heatmap":
            chart = heatmap_chart(read_json(args.spec, what="specialization file"), args.counts)
        elif args.figure == "mi":
            chart = mi_chart(_read_specs(args.spec))
        elif args.figure == "load":
            chart = load_chart(_read_specs(args.spec))
        else:
            table = runs_table(args.summaries)
            fits = crossover_fits(table, args.loss, args.bootstrap, args.seed)
            chart = crossover_chart(table, fits, args.loss)
            write_json_atomic(args.fits_out, fits)
    except (FileNotFoundError, KeyError, ValueError, pl.exceptions.PolarsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    save_chart(chart, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
