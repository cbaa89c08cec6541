"""Every figure of the study drawn from small synthetic inputs, with pandas hidden (issue 26).

`python -m tests.chart_gallery OUT` first makes `import pandas` fail (and `importlib.util.find_spec`
report it absent, as polars and narwhals ask), then builds each chart the graph or a CLI draws, the
way its CLI does, into OUT/<name>.svg, and prints one line per file. tests/test_layout_check.py
runs it in a subprocess and checks every SVG's text with nanigpt.plots.layout_check.
"""

from __future__ import annotations

import importlib.abc
import math
import sys


class HidePandas(importlib.abc.MetaPathFinder):
    """Wraps a finder of sys.meta_path so that it never finds pandas: `import pandas` raises
    ModuleNotFoundError and `importlib.util.find_spec("pandas")` is None, as in an environment
    without it (polars, narwhals and pyarrow ask both ways)."""

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            return None
        find = getattr(self.finder, "find_spec", None)
        return None if find is None else find(name, path, target)

    def __getattr__(self, name):  # find_distributions, invalidate_caches, ...: the finder's own
        return getattr(self.finder, name)


def hide_pandas() -> None:
    if "pandas" in sys.modules:
        raise RuntimeError("pandas is already imported: hide it before anything imports it")
    sys.meta_path[:] = [HidePandas(f) for f in sys.meta_path]


def build_all(out) -> list:
    """Draw every chart into `out`; the paths of the SVGs written."""
    import json
    from pathlib import Path

    import polars as pl

    out = Path(out)
    work = out / "inputs"
    work.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    repo = Path(__file__).resolve().parent.parent

    def svg(name: str) -> Path:
        path = out / f"{name}.svg"
        written.append(path)
        return path

    # The headline and the fit's residuals, with a crossover inside the plotted range.
    from nanigpt.plots import fit_residuals, moe_vs_dense, save_chart
    from nanigpt.scaling.fit import OVERTAKES, fit_all, jsonable
    from tests.test_plots import FLOOR, synthetic_runs

    runs = synthetic_runs()
    fits = jsonable(fit_all(runs, bootstrap=4, seed=0))
    flops = sorted(runs["flops_total"].to_list())
    crossing = {
        "flops": flops[len(flops) // 2],
        "flops_ci": [flops[2], flops[-3]],
        "outcome": OVERTAKES,
        "searched_flops": [flops[0], flops[-1]],
        "bootstrap_outcomes": {OVERTAKES: 0.6},
    }
    fits["moe"]["crossover_vs_dense"] = crossing
    save_chart(moe_vs_dense.build_chart(runs, fits, FLOOR), svg("moe_vs_dense"))
    save_chart(fit_residuals.build_chart(runs, fits), svg("fit_residuals"))

    # IsoFLOP profiles (one budget without a minimum: dashed and in the legend) and loss curves.
    from nanigpt.plots import isoflop as isoflop_plot
    from nanigpt.plots import loss_curves
    from nanigpt.scaling import isoflop
    from tests.test_isoflop import OUT_OF_RANGE_BUDGET, PLANTED_BUDGETS, fake_run, planted_runs

    result = isoflop.isoflop_all(planted_runs(rounding=0.01), budgets=[*PLANTED_BUDGETS])
    result["dense"]["skipped_budgets"].append(dict(OUT_OF_RANGE_BUDGET))
    save_chart(
        isoflop_plot.build_chart(result, "IsoFLOP profiles of sweep iso (Chinchilla approach 2)"),
        svg("isoflop"),
    )
    curves = [
        fake_run(work / "curves", f"{arch}_{size}", arch, size, params, 40)
        for arch in ("dense", "moe")
        for size, params in (("s1", 1000), ("s2", 8000))
    ]
    save_chart(loss_curves.build_chart(curves), svg("loss_curves"))

    # MoE: specialization heatmaps, MI over training, load, expert count, crossover, gain.
    from nanigpt.plots import moe as moe_plots

    specs = []
    for name, experts, sources, top_k in [
        ("mixe2", 2, 4, 1),
        ("mixe8", 8, 4, 2),
        ("solo", 4, 1, 1),
    ]:
        spec_path = work / "moe" / f"{name}.json"
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(json.dumps(_specialization(name, experts, sources, top_k)))
        specs.append(str(spec_path))
    for args in (
        ["heatmap", "--spec", specs[1], "--out", str(svg("moe_heatmap"))],
        ["heatmap", "--spec", specs[2], "--out", str(svg("moe_heatmap_one_source"))],
        ["mi", "--spec", *specs, "--out", str(svg("moe_mi_vs_step"))],
        ["load", "--spec", *specs, "--out", str(svg("moe_load_vs_capacity"))],
        ["experts", "--spec", *specs[:2], "--out", str(svg("moe_experts"))],
    ):
        assert moe_plots.main(args) == 0, args
    summaries = crossover_summaries(work / "crossover")
    argv = ["crossover", "--summaries", *summaries, "--out", str(svg("moe_crossover"))]
    assert (
        moe_plots.main([*argv, "--fits-out", str(work / "crossover.json"), "--bootstrap", "0"]) == 0
    )

    from nanigpt.plots import moe_gain
    from tests.test_moe_gain import truth, write_run

    gains = []
    for dataset, deltas in (("solo", (0.01, -0.01)), ("big", (-0.05, -0.03))):
        for seed, delta in enumerate(deltas):
            dense = 1.0 + 0.1 * seed
            gains.append(write_run(work / "gain", dataset, "dense", seed, dense))
            gains.append(write_run(work / "gain", dataset, "moe", seed, dense + delta, experts=4))
            gains.append(write_run(work / "gain", dataset, "densew4", seed, dense - 0.02, 16.0))
    truths = [truth(work, "solo", 32000.0), truth(work, "big", 512000.0)]
    save_chart(moe_gain.gain(gains, truths)[0], svg("moe_gain_vs_data"))

    # Where the step time goes: one run's breakdown, roofline and memory, and the runs' summary.
    from nanigpt.analysis import report
    from tests.test_trace_analysis import _synthetic_run

    run_dir, hardware = _synthetic_run(work / "profile_in")
    profile = work / "profile" / "toy"
    argv = ["--run-dir", str(run_dir), "--hardware", str(hardware), "--out-dir", str(profile)]
    assert report.main(argv) == 0
    for name in ("breakdown", "roofline", "memory"):
        (profile / f"{name}.svg").replace(svg(f"profile_{name}"))
    argv = ["aggregate", "--reports", str(profile / "report.json")]
    argv += ["--out", str(work / "summary.parquet"), "--chart", str(svg("profile_runs"))]
    assert report.main(argv) == 0

    # The Rust track: tokenizer, checkpoint stall, trace breakdown, the verdict.
    from nanigpt.bench import trace, verdict
    from nanigpt.plots import rust_bench

    tokenizer = pl.DataFrame(
        [
            {"dataset": d, "measure": m, "impl": i, "threads": t, "mb_per_s": v, "corpus": None}
            for d in ("mix", "py")
            for m, i, t, v in [
                ("train", "python", 1, 0.05),
                ("train", "rust", 1, 90.0),
                ("train", "hf_tokenizers", 1, 10.0),
                ("encode", "python", 1, 0.4),
                ("encode", "rust", 1, 40.0),
                ("encode", "rust", 2, 75.0),
                ("encode", "tiktoken", 1, 20.0),
                ("loader", "python", 1, 300.0),
                ("loader", "rust", 1, 900.0),
            ]
        ]
    )
    save_chart(rust_bench.build_chart(tokenizer), svg("rust_tokenizer"))
    methods = ("torch_sha256", "safetensors", "dcp_async", "rust")
    ckpt = pl.DataFrame(
        [
            {
                "state": f"{mb}MB",
                "state_bytes": int(mb * 1e6),
                "method": m,
                "repeat": r,
                "blocked_s": mb * 1e-3 * (k + 1) / (4 if m == "rust" else 1),
                "durable_s": mb * 1e-3 * (k + 1),
            }
            for mb in (10, 50)
            for k, m in enumerate(methods)
            for r in range(2)
        ]
    )
    summary = ckpt.group_by("state_bytes", "method").agg(
        pl.col("blocked_s").median().alias("blocked_median_s"),
        pl.col("durable_s").median().alias("durable_median_s"),
    )  # the columns of nanigpt.bench.checkpoint.summarize that the chart reads (it imports torch)
    save_chart(rust_bench.checkpoint_chart(summary), svg("rust_checkpoint"))
    traces = pl.DataFrame(
        [
            trace._row(mb, int(mb * 1e6), int(mb * 1e5), m, r, mb / rate, None)
            for mb in (1.0, 4.0)
            for m, rate in (("python", 0.8), ("rust", 10.0))
            for r in range(2)
        ]
        + [trace._row(1.0, 10**6, 10**5, "hta_parse", None, None, "not importable")]
    )
    save_chart(rust_bench.trace_chart(traces), svg("rust_trace"))
    rows = [
        *verdict.tokenizer_rows(tokenizer),
        verdict.checkpoint_row(ckpt),
        verdict.trace_row(traces),
        *verdict.orchestration_rows(None),
    ]
    table = pl.DataFrame(rows, infer_schema_length=None)
    save_chart(rust_bench.verdict_chart(table), svg("rust_verdict"))

    # GPU benchmarks drawn from the measurements kept in docs/ (parallelism, kernels).
    from nanigpt.plots.kernels import build_chart as kernels_chart
    from nanigpt.plots.parallel_bench import bench_chart

    measured = repo / "docs" / "measurements"
    save_chart(
        bench_chart(str(measured / "h100x2_parallel" / "bench_h100x2.json")), svg("parallel")
    )
    kernels = json.loads((measured / "h200" / "kernels_bench.json").read_text())
    save_chart(kernels_chart(kernels), svg("kernels"))
    return written


def _specialization(name: str, experts: int, sources: int, top_k: int) -> dict:
    """A specialization.json as nanigpt.analysis.specialization writes it (the fields the MoE
    figures read), from random expert x source counts over two layers and four snapshots."""
    import numpy as np

    rng = np.random.default_rng(experts * 10 + sources)

    def layer(index: int, step: int) -> dict:
        counts = rng.integers(1, 200, size=(experts, sources)) * (
            1 + step * np.eye(experts, sources)
        )
        joint = counts / counts.sum()
        p_e, p_s = joint.sum(1), joint.sum(0)
        h_source = float(-(p_s * np.log(p_s)).sum())
        mi = float((joint * np.log(joint / np.outer(p_e, p_s))).sum())
        load = (counts.sum(1) / counts.sum() * experts).tolist()
        return {
            "layer": index, "num_experts": experts, "top_k": top_k,
            "tokens": int(counts.sum()), "tokens_per_expert": counts.sum(1).tolist(),
            "counts_top1": counts.tolist(), "counts_all": (counts * top_k).tolist(),
            "load": load, "load_cv": float(np.std(load) / np.mean(load)),
            "dropped_frac": 0.01 * step, "h_source_nats": h_source,
            "h_expert_top1_nats": float(-(p_e * np.log(p_e)).sum()),
            "mi_top1_nats": mi, "mi_all_nats": mi,
            "normalized_mi_top1": mi / h_source if sources > 1 else None,
            "normalized_mi_all": mi / h_source if sources > 1 else None,
            "normalized_mi_reason": None if sources > 1 else "one source: H(source) = 0",
            "router_entropy_nats": 0.9 * math.log(experts),
            "router_entropy_max_nats": math.log(experts),
        }  # fmt: skip

    snapshots = [
        {
            "step": step,
            "path": f"snapshots/step_{step:06d}.pt",
            "layers": [layer(0, step), layer(1, step)],
        }
        for step in (0, 4, 8, 12)
    ]
    return {
        "run_id": f"{name}_moe_s1_t200k_single", "dataset": "mix" if sources > 1 else "solo",
        "arch": "moe", "size": "s1", "tokens": 200000, "num_experts": experts,
        "num_routed_experts": experts, "active_experts": top_k, "top_k": top_k,
        "capacity_factor": 1.25, "granularity": 1, "sources_seen": list(range(sources)),
        "tokens_analysed": 1024, "val": "data/tokens/mix-v2048/val.bin",
        "final": snapshots[-1], "over_training": snapshots,
    }  # fmt: skip


def crossover_summaries(root, jitter=lambda d_model, tokens: 1e-3 * ((d_model + tokens) % 3 - 1)):
    """Run folders of dense and two MoE widths at two sizes and two budgets, a known loss surface
    plus `jitter(d_model, tokens)`; the summaries' paths (also tests/test_specialization.py's)."""
    import json

    root.mkdir(parents=True, exist_ok=True)
    summaries = []
    for arch, kind, experts in [("dense", "dense", 1), ("moeE2", "moe", 2), ("moeE4", "moe", 4)]:
        for d_model in (16, 32):
            for tokens in (1000, 4000):
                run_id = f"mix_{arch}_d{d_model}_t{tokens}"
                folder = root / run_id
                folder.mkdir(parents=True)
                moe = None if kind == "dense" else {"num_experts": experts, "top_k": 1}
                model = {"n_layer": 1, "d_model": d_model, "mlp_ratio": 4, "moe": moe}
                (folder / "config.json").write_text(json.dumps({"run": {"model": model}}))
                fpt = 6.0 * d_model**2 * 12
                loss = 1.0 + 50 / d_model + 30 / tokens**0.5 - 0.01 * experts
                summary = {
                    "run_id": run_id, "arch": arch, "arch_kind": kind, "tokens_target": tokens,
                    "tokens_trained": tokens, "params_total": 12 * d_model**2 * experts,
                    "params_active": 12 * d_model**2, "params_non_embedding_active": 12 * d_model**2,
                    "flops_per_token": fpt, "flops_total": fpt * tokens,
                    "final_val_bpb": loss + jitter(d_model, tokens),
                }  # fmt: skip
                (folder / "summary.json").write_text(json.dumps(summary))
                summaries.append(str(folder / "summary.json"))
    return summaries


if __name__ == "__main__":
    hide_pandas()
    for path in build_all(sys.argv[1]):
        print(path)
    print(f"imported: pandas {'pandas' in sys.modules}, torch {'torch' in sys.modules}")
