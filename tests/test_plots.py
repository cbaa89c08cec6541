"""The headline figure is drawn from synthetic runs and fits, refused fits included (issue 7)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import vl_convert

from nanigpt.plots import fit_residuals, moe_vs_dense
from nanigpt.scaling.fit import LawParams, fit_all, jsonable

FLOOR = 0.85
LAWS = {
    "dense": LawParams(E=0.9, A=30.0, B=60.0, alpha=0.33, beta=0.28),
    "moe": LawParams(E=0.9, A=20.0, B=60.0, alpha=0.33, beta=0.28),
}


def synthetic_runs() -> pl.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for arch_kind, law in LAWS.items():
        for i, n in enumerate(np.geomspace(2e5, 4e6, 3)):
            for tokens in np.geomspace(1e6, 2e7, 3):
                loss = float(law.loss(n, tokens) * np.exp(rng.normal(0, 0.01)))
                flops_per_token = 6 * n + 1.2e5
                rows.append(
                    {
                        "run_id": f"{arch_kind}_s{i + 1}_t{int(tokens)}",
                        "arch_kind": arch_kind,
                        "size": f"s{i + 1}",
                        "tokens_trained": int(tokens),
                        "params_non_embedding_active": int(n),
                        "flops_per_token": flops_per_token,
                        "flops_total": flops_per_token * tokens,
                        "flops_6nd": 6 * n * tokens,
                        "final_val_bpb": loss,
                        "floor_bpb": FLOOR,
                    }
                )
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plot")
    runs = synthetic_runs()
    runs.write_parquet(folder / "runs.parquet")
    fits = jsonable(fit_all(runs, bootstrap=20, seed=0))
    (folder / "fits.json").write_text(json.dumps(fits))
    (folder / "ground_truth.json").write_text(
        json.dumps({"dataset": "mix", "floor_bits_per_byte": FLOOR})
    )
    return folder, fits


def draw(folder, fits_name="fits.json", truth_name="ground_truth.json", out_name="fig.svg"):
    out = folder / "results" / out_name
    rc = moe_vs_dense.main(
        [
            "--runs",
            str(folder / "runs.parquet"),
            "--fits",
            str(folder / fits_name),
            "--ground-truth",
            str(folder / truth_name),
            "--out",
            str(out),
        ]
    )
    return rc, out


def test_plot_cli_writes_svg_with_floor_and_both_archs(inputs):
    folder, fits = inputs
    assert "error" not in fits["dense"] and "error" not in fits["moe"]
    rc, out = draw(folder)
    assert rc == 0
    svg = out.read_text()
    assert svg.startswith("<svg")
    assert "entropy floor" in svg and f"{FLOOR:.3f}" in svg
    assert "dense" in svg and "moe" in svg
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp file left
    png = vl_convert.svg_to_png(svg)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_refused_fit_keeps_points_and_says_so(inputs):
    folder, fits = inputs
    refused = dict(fits, moe={"error": "moe: 3 runs; a 5-parameter law needs at least 5"})
    (folder / "fits_refused.json").write_text(json.dumps(refused))
    rc, out = draw(folder, fits_name="fits_refused.json", out_name="refused.svg")
    assert rc == 0
    svg = out.read_text()
    assert svg.startswith("<svg")
    assert "moe: fit refused" in svg and "entropy floor" in svg


def test_missing_floor_is_a_clear_error(inputs, capsys):
    folder, _ = inputs
    (folder / "truth_bad.json").write_text(json.dumps({"dataset": "mix"}))
    rc, out = draw(folder, truth_name="truth_bad.json", out_name="bad.svg")
    assert rc == 2 and not out.exists()
    assert "floor_bits_per_byte" in capsys.readouterr().err


def test_residual_chart(inputs):
    folder, _ = inputs
    out = folder / "results" / "residuals.svg"
    args = ["--runs", str(folder / "runs.parquet"), "--fits", str(folder / "fits.json")]
    assert fit_residuals.main([*args, "--out", str(out)]) == 0
    svg = out.read_text()
    assert svg.startswith("<svg") and "rms log residual" in svg


def test_rust_bench_chart_renders(tmp_path):
    import polars as pl

    from nanigpt.plots.rust_bench import main as rust_bench_main

    rows = [
        {"dataset": "mix", "measure": m, "impl": i, "threads": 1, "mb_per_s": v, "corpus": None}
        for m, i, v in [("train", "python", 1.0), ("train", "rust", 90.0), ("encode", "rust", 40.0)]
    ]
    pl.DataFrame(rows).write_parquet(tmp_path / "bench.parquet")
    out = tmp_path / "bench.svg"
    assert rust_bench_main(["--bench", str(tmp_path / "bench.parquet"), "--out", str(out)]) == 0
    svg = out.read_text()
    assert "<svg" in svg[:300] and "rust (1 thr)" in svg
    assert rust_bench_main(["--bench", str(tmp_path / "missing.parquet"), "--out", str(out)]) == 2


def test_save_chart_writes_with_the_usual_file_mode_and_leaves_no_temporary(tmp_path):
    import os

    import altair as alt

    from nanigpt.plots import save_chart

    chart = alt.Chart(alt.Data(values=[{"a": 1}])).mark_point().encode(x="a:Q")
    out = save_chart(chart, tmp_path / "fig.svg")
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert out.read_text().startswith("<svg") and os.listdir(tmp_path) == ["fig.svg"]


def test_log_ticks_do_not_crowd_and_frontier_stops_at_the_floor():
    from nanigpt.plots import log_ticks
    from nanigpt.plots.moe_vs_dense import _frontier_rows

    assert log_ticks([2e9, 3e11]) == [1e10, 1e11]  # whole decades: no 2..9 x 10^k labels
    few = log_ticks([2.5e10, 4.5e10])  # inside one decade: a 1-2-5 or 1-3 step, never 1..9
    assert 1 <= len(few) <= 6 and all(2.5e10 <= t <= 4.5e10 for t in few)
    assert len(log_ticks([1.0, 1e30])) <= 6
    fits = {
        "dense": {
            "frontier_flops": [1.0, 2.0, 3.0],
            "frontier_loss": [0.9, 0.7, 0.5],
            "frontier_loss_lo": [0.8, 0.55, 0.4],
            "frontier_loss_hi": [1.0, 0.8, 0.6],
        }
    }
    rows = _frontier_rows(fits, floor=0.6)
    assert [r["loss"] for r in rows] == [0.9, 0.7]  # the point below the floor is not drawn
    assert min(r["loss_lo"] for r in rows) == 0.6  # and the band is clipped at it
