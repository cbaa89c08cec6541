"""MoE gain against the data's knowledge content: `results/moe/gain_vs_data.svg` (+ .json).

Serves core questions 3 and 5 (when do MoEs win; how does data structure interact with the
architecture), prediction (b) of issue 15: an MoE's extra expert parameters help only when the data
holds more than the dense model can store, so its gain should grow with the data's knowledge bits
per parameter and be about zero on the single-source control. At one model size and one token
budget (fixed compute), for each dataset of the sweeps: the MoE run minus the dense run, and the
matched-total-parameter dense run (E times the MLP) minus the dense run, each per seed and then as
the mean and range over seeds (`nanigpt.scaling.seeds`); a range that includes zero is drawn hollow
and worded as no difference. The x axis is the dataset's `knowledge.bits` (ground_truth.json,
`nanigpt.data.synthetic.knowledge_bits`) over the dense model's non-embedding parameters: the
knowledge-to-capacity ratio (Allen-Zhu and Li 2024 measure about 2 bits stored per parameter).

CLI: `python -m nanigpt.plots.moe_gain --summaries results/runs/*/summary.json
      --ground-truth data/synthetic/*/ground_truth.json --out gain_vs_data.svg --json-out gain.json
      [--loss final_val_bpb]`
(any of its arguments may come from `@FILE`, one a line: the graph passes both lists that way).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any

import altair as alt
import polars as pl

from nanigpt.io import read_json, write_json_atomic
from nanigpt.plots import save_from_cli
from nanigpt.scaling.crossover import baseline_mlp_ratio, is_baseline_dense, runs_table
from nanigpt.scaling.seeds import summarise, worded

LOSS_UNITS = {"final_val_bpb": "bits/byte", "final_val_loss": "nats/token"}


def knowledge_of(truth_paths: Sequence[str]) -> dict[str, float]:
    """Dataset name -> knowledge bits of its transition tables, from ground_truth.json files."""
    out = {}
    for path in truth_paths:
        truth = read_json(path, what="ground truth")
        bits = (truth.get("knowledge") or {}).get("bits")
        if bits is None:
            raise ValueError(
                f"{path}: no knowledge.bits (written by nanigpt.data.synthetic since issue 15); "
                f"rebuild the dataset"
            )
        out[truth["dataset"]] = float(bits)
    return out


def _label(row: dict[str, Any], baseline: float | None) -> str:
    if row["arch_kind"] == "dense":
        ratio = row["mlp_ratio"] / baseline if baseline else float("nan")
        return f"dense, {ratio:g}x wider MLP (matched total params) - dense"
    return f"MoE E={row['num_experts']} top-{row['top_k']} - dense"


def gain_rows(table: pl.DataFrame, knowledge: dict[str, float], loss: str) -> list[dict[str, Any]]:
    """Per seed: every non-baseline run minus the baseline dense run of the same dataset, depth,
    width, tokens and seed, at x = knowledge bits / that dense run's non-embedding parameters."""
    baseline = baseline_mlp_ratio(table)
    rows = table.to_dicts()
    key = lambda r: (r["dataset"], r["n_layer"], r["d_model"], r["tokens_target"], r["seed"])  # noqa: E731
    dense = {key(r): r for r in rows if is_baseline_dense(r, baseline)}
    out = []
    for r in rows:
        partner = dense.get(key(r))
        if is_baseline_dense(r, baseline) or partner is None or r[loss] is None:
            continue
        if r["dataset"] not in knowledge:
            raise ValueError(f"run {r['run_id']}: no ground truth given for dataset {r['dataset']}")
        bits = knowledge[r["dataset"]]
        out.append(
            {
                "line": _label(r, baseline),
                "dataset": r["dataset"],
                "size": r["size"],
                "tokens": r["tokens_target"],
                "seed": r["seed"],
                "knowledge_bits": bits,
                "bits_per_param": bits / partner["params_non_embedding_active"],
                "dense_loss": partner[loss],
                "delta": r[loss] - partner[loss],
            }
        )
    if not out:
        raise ValueError(
            "no run has a dense partner of the same dataset, size, tokens and seed: the "
            "knowledge sweeps need the dense arch beside the MoE and wide-dense archs"
        )
    return out


def gain_chart(summary: list[dict[str, Any]], control: str | None, unit: str) -> alt.LayerChart:
    x = alt.X(
        "bits_per_param:Q",
        title="knowledge bits of the data's tables per non-embedding parameter of the dense model",
        scale=alt.Scale(type="log"),
    )
    y = alt.Y("delta:Q", title=f"loss minus dense ({unit}); below 0: better than dense")
    colour = alt.Color("line:N", title=None, legend=alt.Legend(orient="bottom", labelLimit=400))
    base = alt.Chart(alt.Data(values=summary))
    zero = alt.Chart(alt.Data(values=[{"delta": 0.0}])).mark_rule(color="black").encode(y=y)
    band = base.mark_rule(strokeWidth=2).encode(x=x, y="delta_lo:Q", y2="delta_hi:Q", color=colour)
    line = base.mark_line(strokeDash=[4, 3]).encode(
        x=x, y=y, color=colour, detail=["size:N", "tokens:Q"]
    )
    tooltip = ["line:N", "dataset:N", "delta:Q", "delta_lo:Q", "delta_hi:Q", "seeds:Q", "verdict:N"]
    points = base.mark_point(size=80, strokeWidth=2).encode(
        x=x,
        y=y,
        color=colour,
        fill=alt.condition(
            "datum.beyond_spread", alt.Color("line:N", legend=None), alt.value("white")
        ),
        tooltip=tooltip,
    )
    tops: dict[tuple, dict[str, Any]] = {}  # one name per dataset and x, above its highest bar
    for r in summary:
        key = (r["dataset"], r["bits_per_param"])
        if key not in tops or r["delta_hi"] > tops[key]["delta_hi"]:
            tops[key] = r
    labels = (
        alt.Chart(alt.Data(values=list(tops.values())))
        .mark_text(dy=-14, fontSize=10)
        .encode(x=x, y=alt.Y("delta_hi:Q"), text="dataset:N")
    )
    subtitle = [
        "per seed: run minus the dense run of the same dataset, size, tokens and seed; "
        "bar: range over seeds; hollow: the range includes 0 (no difference)",
    ]
    if control:
        subtitle.append(f"{control}: the single-source control (one table: no sources to split)")
    for r in sorted(summary, key=lambda r: (r["line"], r["bits_per_param"])):
        text = worded(r["delta"], r["delta_lo"], r["delta_hi"], r["seeds"], unit)
        subtitle.append(
            f"{r['line']}, {r['dataset']} ({r['bits_per_param']:.3g} bits/param): {text}"
        )
    return alt.layer(zero, band, line, points, labels).properties(
        width=520,
        height=340,
        title=alt.TitleParams(
            "MoE gain against the data's knowledge content (fixed size and compute)",
            subtitle=subtitle,
            anchor="start",
        ),
    )


def gain(
    summaries: Sequence[str], truths: Sequence[str], loss: str = "final_val_bpb"
) -> tuple[alt.LayerChart, dict[str, Any]]:
    knowledge = knowledge_of(truths)
    table = runs_table(summaries)
    rows = gain_rows(table, knowledge, loss)
    summary = summarise(rows, ("line", "dataset", "size", "tokens"))
    summary.sort(key=lambda r: (r["line"], r["bits_per_param"], r["tokens"]))
    single = [
        r["dataset"]
        for r in summary
        if math.isclose(r["bits_per_param"], min(s["bits_per_param"] for s in summary))
    ]
    control = single[0] if single else None
    unit = LOSS_UNITS.get(loss, "")
    result = {"loss": loss, "unit": unit, "knowledge_bits": knowledge, "per_seed": rows,
              "summary": summary, "control": control}  # fmt: skip
    return gain_chart(summary, control, unit), result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.plots.moe_gain",
        description=__doc__,
        fromfile_prefix_chars="@",  # `@LIST`: a file of arguments, one a line
    )
    parser.add_argument(
        "--summaries", nargs="+", required=True, help="summary.json of each run (or @LIST)"
    )
    parser.add_argument("--ground-truth", nargs="+", required=True, help="ground_truth.json files")
    parser.add_argument("--out", required=True, help="SVG to write")
    parser.add_argument("--json-out", required=True, help="per-seed and summarised numbers")
    parser.add_argument("--loss", default="final_val_bpb", choices=sorted(LOSS_UNITS))
    args = parser.parse_args(argv)

    def build() -> alt.LayerChart:
        chart, result = gain(args.summaries, args.ground_truth, args.loss)
        write_json_atomic(args.json_out, result)
        return chart

    return save_from_cli(build, args.out)


if __name__ == "__main__":
    sys.exit(main())
