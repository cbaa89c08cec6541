"""The MoE-dense crossover's numbers: where does an MoE overtake the dense model? (core question 3)

The crossover figure (`nanigpt.plots.moe crossover`) draws what is computed here from the runs'
summaries:
- *matched active compute* (`paired_differences`): each MoE run minus the dense run of the same
  depth, width, MLP ratio, token budget and seed (the dense model is the MoE with one expert; top-1
  MoE spends the same FLOPs per token, up to the router);
- *matched total parameters* (`matched_params_differences`): each MoE run minus a dense run of the
  same token budget and seed whose total parameter count is within `MATCHED_PARAMS_TOLERANCE` (2%)
  of the MoE's, preferring the same depth and width, then the nearest count. A dense arch with
  `mlp_ratio` E times the model's is such a partner: the E experts' weights in one MLP, so the two
  differ only by the router (d_model x E weights per layer);
- *fits* (`crossover_fits`, `frontier_differences`): L(N, D) = E + A/N^alpha + B/D^beta fitted per
  MoE arch (one expert count, top-k and capacity each) and for the dense baseline by
  `nanigpt.scaling.fit.fit_all` (Chinchilla approach 3, Hoffmann et al. 2022), and the differences
  of their compute-optimal frontiers. The dense baseline is the dense runs with the MoE runs' MLP
  ratio (`baseline_mlp_ratio`); wider dense runs are matched-parameter partners only.
Every pair is of the same seed; `nanigpt.scaling.seeds` summarises the seeds of one setting.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from nanigpt.io import read_json
from nanigpt.scaling.seeds import base_run_id

DROPLESS = "dropless"
# A dense run matches an MoE run's total parameters when the counts differ by at most this share.
MATCHED_PARAMS_TOLERANCE = 0.02


def capacity_label(capacity_factor: float | None) -> str:
    """A capacity factor as a label: its value, or "dropless" when there is none."""
    return DROPLESS if capacity_factor is None else f"{capacity_factor:g}"


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
                "dataset": summary.get("dataset", run.get("dataset")),
                "seed": summary.get("seed", (run.get("training") or {}).get("seed", 0)),
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


def baseline_mlp_ratio(table: pl.DataFrame) -> float | None:
    """The dense baseline's MLP ratio: the one the MoE runs' experts are carved from (most common;
    the smallest dense one when there is no MoE run)."""
    ratios = table.filter(pl.col("arch_kind") != "dense")["mlp_ratio"].to_list()
    ratios = (
        ratios or sorted(table.filter(pl.col("arch_kind") == "dense")["mlp_ratio"].to_list())[:1]
    )
    if not ratios:
        return None
    counts = Counter(ratios)
    return min(counts, key=lambda r: (-counts[r], r))


def is_baseline_dense(row: dict[str, Any], baseline: float | None) -> bool:
    return row["arch_kind"] == "dense" and (
        baseline is None or math.isclose(row["mlp_ratio"], baseline, rel_tol=1e-9)
    )


def arch_label(row: dict[str, Any], baseline: float | None = None) -> str:
    if row["arch_kind"] == "dense":
        if is_baseline_dense(row, baseline):
            return "dense"
        return f"{row['arch']}: dense, mlp_ratio={row['mlp_ratio']:g}"
    cf = capacity_label(row["capacity_factor"])
    return f"{row['arch']}: E={row['num_experts']} k={row['top_k']} cf={cf} g={row['granularity']}"


def paired_differences(table: pl.DataFrame, loss: str) -> list[dict[str, Any]]:
    """Matched active compute: MoE loss minus the dense loss at the same depth, width, MLP ratio,
    token budget and seed."""
    dense = {
        (r["n_layer"], r["d_model"], r["mlp_ratio"], r["tokens_target"], r.get("seed", 0)): r
        for r in table.filter(pl.col("arch_kind") == "dense").to_dicts()
    }
    rows = []
    for r in table.filter(pl.col("arch_kind") != "dense").to_dicts():
        key = (r["n_layer"], r["d_model"], r["mlp_ratio"], r["tokens_target"], r.get("seed", 0))
        partner = dense.get(key)
        if partner is None or r[loss] is None or partner[loss] is None:
            continue
        rows.append(
            pair_row(
                r, partner, loss,
                active_over_dense_flops=r["flops_per_token"] / partner["flops_per_token"],
            )
        )  # fmt: skip
    return rows


def pair_row(moe: dict, dense: dict, loss: str, **extra: float) -> dict[str, Any]:
    """One point of the crossover figure: an MoE run minus its dense partner, at the MoE's compute."""
    return {
        "line": arch_label(moe),
        "run_id": base_run_id(moe["run_id"]),
        "dense_run_id": base_run_id(dense["run_id"]),
        "seed": moe.get("seed", 0),
        "flops": moe["flops_total"],
        "delta": moe[loss] - dense[loss],
        "total_over_dense_params": moe["params_total"] / dense["params_total"],
        **extra,
    }


def matched_params_differences(
    table: pl.DataFrame, loss: str, tolerance: float = MATCHED_PARAMS_TOLERANCE
) -> list[dict[str, Any]]:
    """Matched total parameters: MoE loss minus the loss of a dense run of the same token budget
    whose `params_total` is within `tolerance` (relative) of the MoE's; among several, the one of
    the same depth and width, then the nearest count, then the run id."""
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance={tolerance}: expected a relative difference in [0, 1)")
    dense = [
        r
        for r in table.filter(pl.col("arch_kind") == "dense").to_dicts()
        if r[loss] is not None and r["params_total"]
    ]
    rows = []
    for r in table.filter(pl.col("arch_kind") != "dense").to_dicts():
        if r[loss] is None or not r["params_total"]:
            continue
        candidates = [
            d
            for d in dense
            if d["tokens_target"] == r["tokens_target"]
            and d.get("seed", 0) == r.get("seed", 0)
            and abs(d["params_total"] / r["params_total"] - 1) <= tolerance
        ]
        if not candidates:
            continue
        partner = min(
            candidates,
            key=lambda d: (
                (d["n_layer"], d["d_model"]) != (r["n_layer"], r["d_model"]),
                abs(math.log(d["params_total"] / r["params_total"])),
                d["run_id"],
            ),
        )
        rows.append(
            pair_row(
                r, partner, loss,
                dense_over_moe_flops=partner["flops_per_token"] / r["flops_per_token"],
            )
        )  # fmt: skip
    return rows


def crossover_fits(table: pl.DataFrame, loss: str, bootstrap: int, seed: int = 0) -> dict[str, Any]:
    """fits.json-style fits, one per MoE arch and one for the dense baseline (the dense runs with
    the MoE runs' MLP ratio; wider dense runs are matched-parameter partners, not fitted), via
    `nanigpt.scaling.fit.fit_all`."""
    from nanigpt.scaling.fit import fit_all, jsonable

    baseline = baseline_mlp_ratio(table)
    rows = table.to_dicts()
    keep = [r["arch_kind"] != "dense" or is_baseline_dense(r, baseline) for r in rows]
    labelled = table.with_columns(
        pl.Series("arch_kind", [arch_label(r, baseline) for r in rows])
    ).filter(pl.Series(keep))
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
