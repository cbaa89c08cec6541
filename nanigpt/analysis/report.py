"""Per-run profile report: where does the step time go, how close to the ceilings, what fills
memory? (project question 1)

Joins a run folder's outputs with the device's measured ceilings (`nanigpt.analysis.ceilings`):
the step split into phases (median over steady steps: not profiled, not the first; a phase's share
is its summed time over the summed step time, so the shares add to 1, while on a busy machine the
per-phase medians need not add up to the median step), the kernel categories of the trace
(`nanigpt.analysis.trace_analysis`), MFU against the datasheet peak and the measured matmul
ceiling, the roofline points and the predicted memory footprint (`nanigpt.analysis.memory`), drawn
by `nanigpt.plots.breakdown` and `nanigpt.plots.roofline`. The files it writes and their fields:
`docs/interfaces.md`, "Analysis outputs".

Roofline points (`roofline_points`): the x axis needs bytes, and a trace has none, so the bytes are
*estimated* as ideal traffic, each operand read once and each result written once, in the compute
dtype: a matmul [N, i] x [i, o] moves N i + i o + N o elements in the forward and as many in each of
the two backward matmuls; attention moves q, k, v and o in the forward and q, k, v, o, dO, dq, dk, dv
in the backward (12 N d per layer). FLOPs are the counted ones (`nanigpt.model.flops`): matmul =
every matmul component but the attention scores, attention = the scores (full s x s, so a causal
kernel does about half of it). So the intensities are upper bounds and the points are estimates;
norm/elementwise, copies and communication have no FLOP count and are not placed.

`aggregate` joins the reports of a sweep into one table and chart comparing the runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from nanigpt.analysis import memory, trace_analysis
from nanigpt.io import atomic_path, read_json, write_json_atomic
from nanigpt.measure.hardware import peak_bf16_flops, slugify
from nanigpt.model.config import GPTConfig
from nanigpt.model.flops import count

# The phases StepTimer splits a step into (nanigpt.training.step.PHASES); with `other_s` they sum to the
# step time. Other `comm_*_s` columns (measured, blocked, predicted communication) are details of
# the comm phase, reported beside it, not phases.
PHASES = ("data", "forward", "backward", "comm", "optimizer")
COMM_DETAILS = ("comm_measured_s", "comm_blocked_s", "comm_predicted_s")


def _device_slug(device: str | None) -> str | None:
    if not device:
        return None
    return "cpu" if device.lower().startswith("cpu") else slugify(device)


# ---------------------------------------------------------------------------------------------
# Step phases


def phase_breakdown(metrics_path: str | Path) -> dict[str, Any]:
    """Median seconds per phase over steady steps, and their shares of the median step time."""
    table = pq.read_table(metrics_path)
    rows = table.to_pylist()
    if not rows:
        raise ValueError(f"{metrics_path}: no steps recorded")
    steady = [r for r in rows[1:] if not r.get("profiled")] or rows
    present = set(table.column_names)
    ordered = [f"{p}_s" for p in PHASES if f"{p}_s" in present]
    # a phase that never ran (comm in a single-process run) is left out
    ordered = [c for c in ordered if any(r.get(c) for r in steady)] + ["other_s"]
    comm_details = {
        c.removesuffix("_s"): statistics.median(r[c] for r in steady if r.get(c) is not None)
        for c in COMM_DETAILS
        if c in present and any(r.get(c) for r in steady)
    }
    step = statistics.median(r["step_time_s"] for r in steady)
    step_total = sum(r["step_time_s"] for r in steady)
    phases = []
    for column in ordered:
        values = [r[column] or 0.0 for r in steady]
        phases.append(
            {
                "category": column.removesuffix("_s"),
                "seconds": statistics.median(values),
                "seconds_mean": sum(values) / len(values),
                # ratio of sums: the phases of a step add up to its time, so the shares add to 1
                # (medians taken phase by phase need not add up to the median step)
                "share": sum(values) / step_total,
            }
        )
    return {
        "steady_steps": len(steady),
        "step_time_s_median": step,
        "step_time_s_mean": step_total / len(steady),
        "phases": phases,
        "sum_of_medians_over_step": sum(p["seconds"] for p in phases) / step,
        "comm_details_median_s": comm_details,
    }


# ---------------------------------------------------------------------------------------------
# Roofline estimates


def _matmul_shapes(cfg: GPTConfig, tokens: int) -> list[tuple[int, int, int]]:
    """(rows, in, out) of every matmul in one forward over `tokens` tokens."""
    d, h, V = cfg.d_model, cfg.mlp_hidden, cfg.vocab_size
    shapes: list[tuple[int, int, int]] = []
    for layer in range(cfg.n_layer):
        shapes += [(tokens, d, d)] * 4
        if layer in cfg.moe_layers:
            moe = cfg.moe
            he, n_experts, k = moe.expert_hidden(h), moe.num_routed_experts, moe.active_experts
            rows = max(1, tokens * k // n_experts)  # uniform routing
            shapes.append((tokens, d, n_experts))
            for _ in range(n_experts):
                shapes += [(rows, d, he), (rows, d, he), (rows, he, d)]
            if moe.shared_expert:
                shapes += [(tokens, d, he), (tokens, d, he), (tokens, he, d)]
        else:
            shapes += [(tokens, d, h), (tokens, d, h), (tokens, h, d)]
    shapes.append((tokens, d, V))
    return shapes


def roofline_points(
    cfg: GPTConfig,
    tokens_per_microbatch: int,
    microbatches: int,
    seq_len: int,
    kernel_time_s: dict[str, float],
    dtype_bytes: int,
) -> list[dict[str, Any]]:
    """Matmul and attention: counted FLOPs and estimated bytes of the profiled window, achieved FLOP/s."""
    acc = count(cfg, seq_len=seq_len)
    train = acc.train_by_component
    tokens = tokens_per_microbatch * microbatches
    matmul_flops = tokens * sum(f for name, f in train.items() if name != "attention_scores")
    attention_flops = tokens * train["attention_scores"]
    matmul_bytes = microbatches * sum(
        3 * dtype_bytes * (n * i + i * o + n * o)
        for n, i, o in _matmul_shapes(cfg, tokens_per_microbatch)
    )
    attention_bytes = 12 * tokens * cfg.d_model * dtype_bytes * cfg.n_layer
    points = []
    for category, flops, nbytes in (
        ("matmul", matmul_flops, matmul_bytes),
        ("attention", attention_flops, attention_bytes),
    ):
        seconds = kernel_time_s.get(category, 0.0)
        points.append(
            {
                "category": category,
                "flops": float(flops),
                "bytes_estimated": float(nbytes),
                "intensity": flops / nbytes if nbytes else None,
                "kernel_time_s": seconds,
                "achieved_flops_per_s": flops / seconds if seconds > 0 else None,
                "estimated": "bytes: ideal traffic; flops: counted",
            }
        )
    return points


# ---------------------------------------------------------------------------------------------
# The report of one run


def build_report(run_dir: str | Path, hardware_path: str | Path | None) -> dict[str, Any]:
    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json", "run config.json")
    summary = read_json(run_dir / "summary.json", "run summary.json")
    run, derived = config["run"], config.get("derived", {})
    hardware = read_json(hardware_path, "hardware ceilings") if hardware_path else None
    device_type = "cuda" if str(derived.get("device", "")).startswith("cuda") else "cpu"
    cfg = GPTConfig.from_dict(run["model"])
    t = run["training"]

    phases = phase_breakdown(run_dir / "metrics.parquet")
    trace = trace_analysis.analyze(trace_analysis.load_trace(run_dir / "trace.json.gz"))

    flops_per_token = float(summary["flops_per_token"])
    tokens_per_s = summary.get("tokens_per_s")
    achieved = flops_per_token * tokens_per_s if tokens_per_s else None
    datasheet = hardware.get("datasheet_peak_flops") if hardware else None
    if datasheet is None and device_type == "cuda":
        datasheet = peak_bf16_flops(summary.get("device"))  # the table, without a ceilings file
    measured = hardware.get("matmul_flops_per_s") if hardware else None
    run_slug = _device_slug(summary.get("device"))
    hw_slug = hardware.get("device_slug") if hardware else None

    tokens_per_micro = t["batch_size"] * t["seq_len"]
    microbatches = max(trace.steps, 1) * t["grad_accum"]
    points = (
        roofline_points(
            cfg,
            tokens_per_micro,
            microbatches,
            t["seq_len"],
            trace.kernel_time_s,
            2 if device_type == "cuda" else 4,
        )
        if trace.mode != "empty"
        else []
    )
    mem = memory.compare(
        memory.predict_run(run, device_type), memory.measured_peak(run_dir), device_type
    )
    return {
        "run_id": summary.get("run_id", run.get("run_id")),
        "arch_kind": run.get("arch_kind"),
        "size": run.get("size"),
        "parallelism_name": run.get("parallelism_name"),
        "device": summary.get("device"),
        "device_type": device_type,
        "hardware_device": hardware.get("device") if hardware else None,
        "hardware_matches_run": None if not hardware else run_slug == hw_slug,
        "tokens_per_step": derived.get("tokens_per_step"),
        "tokens_per_s": tokens_per_s,
        "flops_per_token": flops_per_token,
        "achieved_flops_per_s": achieved,
        "datasheet_peak_flops": datasheet,
        "measured_matmul_flops_per_s": measured,
        "measured_copy_bytes_per_s": hardware.get("copy_bytes_per_s") if hardware else None,
        "mfu_datasheet": achieved / datasheet if achieved and datasheet else None,
        "mfu_measured": achieved / measured if achieved and measured else None,
        "phases": phases,
        "trace": trace.summary(),
        "trace_rows": trace.rows(),
        "roofline": points,
        "memory": mem,
    }


def breakdown_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [
        {
            "run_id": report["run_id"],
            "section": "phase",
            "category": p["category"],
            "seconds_per_step": p["seconds"],
            "share": p["share"],
            "kernel_time_s": None,
            "count": None,
        }
        for p in report["phases"]["phases"]
    ]
    steps = max(report["trace"]["steps"], 1)
    rows += [
        {
            "run_id": report["run_id"],
            "section": "trace",
            "category": r["category"],
            "seconds_per_step": r["wall_time_s"] / steps,
            "share": r["wall_share"],
            "kernel_time_s": r["kernel_time_s"],
            "count": r["count"],
        }
        for r in report["trace_rows"]
    ]
    return rows


def write_run_report(report: dict[str, Any], out_dir: str | Path, hardware: dict | None) -> None:
    from nanigpt.plots.breakdown import memory_chart, step_breakdown_chart
    from nanigpt.plots.roofline import roofline_chart

    out_dir = Path(out_dir)
    rows = breakdown_rows(report)
    with atomic_path(out_dir / "breakdown.parquet") as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
    with atomic_path(out_dir / "trace_breakdown.parquet") as tmp:
        pq.write_table(pa.Table.from_pylist(report["trace_rows"]), tmp)
    write_json_atomic(out_dir / "trace_breakdown.json", report["trace"])
    write_json_atomic(out_dir / "memory.json", report["memory"])
    step_breakdown_chart(rows, report, out_dir / "breakdown.svg")
    roofline_chart(report["roofline"], hardware, report, out_dir / "roofline.svg")
    memory_chart(report["memory"], report, out_dir / "memory.svg")
    write_json_atomic(out_dir / "report.json", report)  # last: marks the folder complete


# ---------------------------------------------------------------------------------------------
# Aggregate over runs


def summary_row(report: dict[str, Any]) -> dict[str, Any]:
    row = {
        key: report.get(key)
        for key in (
            "run_id",
            "arch_kind",
            "size",
            "parallelism_name",
            "device",
            "tokens_per_s",
            "flops_per_token",
            "achieved_flops_per_s",
            "mfu_datasheet",
            "mfu_measured",
        )
    }
    row["step_time_s_median"] = report["phases"]["step_time_s_median"]
    for p in report["phases"]["phases"]:
        row[f"phase_share_{p['category']}"] = p["share"]
    for r in report["trace_rows"]:
        row[f"trace_share_{r['category']}"] = r["wall_share"]
    row["comm_overlap_frac"] = report["trace"]["comm_overlap_frac"]
    row["memory_predicted_bytes"] = report["memory"]["predicted_total_bytes"]
    row["memory_measured_bytes"] = report["memory"]["measured_peak_bytes"]
    return row


def aggregate(report_paths: list[str | Path], out: str | Path, chart: str | Path | None) -> None:
    from nanigpt.plots.breakdown import runs_breakdown_chart

    reports = [read_json(p, "profile report") for p in report_paths]
    if not reports:
        raise ValueError("aggregate: no reports given")
    rows = [summary_row(r) for r in reports]
    columns = sorted({k for row in rows for k in row}, key=lambda k: (k != "run_id", k))
    table = pa.Table.from_pylist([{k: row.get(k) for k in columns} for row in rows])
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    if chart:
        runs_breakdown_chart([row for r in reports for row in breakdown_rows(r)], chart)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = "python -m nanigpt.analysis.report"
    if argv and argv[0] == "aggregate":
        parser = argparse.ArgumentParser(
            prog=f"{prog} aggregate",
            description="Combine run reports.",
            fromfile_prefix_chars="@",  # `@LIST`: a file of arguments, one a line
        )
        parser.add_argument(
            "--reports", nargs="+", required=True, help="report.json of each run (or @LIST)"
        )
        parser.add_argument("--out", required=True, help="summary.parquet to write")
        parser.add_argument("--chart", default=None, help="breakdown.svg comparing the runs")
        args = parser.parse_args(argv[1:])
        try:
            aggregate(args.reports, args.out, args.chart)
        except (FileNotFoundError, ValueError, KeyError) as e:
            print(f"nanigpt.analysis.report: error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {args.out}" + (f" and {args.chart}" if args.chart else ""))
        return 0
    parser = argparse.ArgumentParser(prog=prog, description="Profile report of one run.")
    parser.add_argument("--run-dir", required=True, help="results/runs/RUN")
    parser.add_argument("--hardware", default=None, help="results/hardware/DEVICE.json")
    parser.add_argument("--out-dir", required=True, help="results/profile/RUN")
    args = parser.parse_args(argv)
    try:
        hardware = read_json(args.hardware, "hardware ceilings") if args.hardware else None
        report = build_report(args.run_dir, args.hardware)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"nanigpt.analysis.report: error: {e}", file=sys.stderr)
        return 2
    if report["hardware_matches_run"] is False:
        print(
            f"nanigpt.analysis.report: warning: run device {report['device']!r} is not the "
            f"hardware file's {report['hardware_device']!r}; measured-ceiling MFU compares them anyway",
            file=sys.stderr,
        )
    write_run_report(report, args.out_dir, hardware)
    mfu_d, mfu_m = report["mfu_datasheet"], report["mfu_measured"]
    shares = ", ".join(f"{p['category']} {p['share']:.0%}" for p in report["phases"]["phases"])
    print(
        f"{report['run_id']}: step {report['phases']['step_time_s_median'] * 1e3:.2f} ms ({shares}); "
        f"MFU datasheet {'n/a' if mfu_d is None else f'{mfu_d:.1%}'}, "
        f"measured ceiling {'n/a' if mfu_m is None else f'{mfu_m:.1%}'}; wrote {args.out_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
