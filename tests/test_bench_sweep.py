"""nanigpt.bench.sweep: the harness measures every mode on tiny shapes in seconds, and its CLI
writes the JSON and figure and refuses bad input with exit 2."""

from __future__ import annotations

import dataclasses
import json

import pytest

from nanigpt.bench import sweep

TINY = dataclasses.replace(
    sweep.PRESETS["cpu"], sizes=["h4"], stack=[1, 2], moe_sizes=["h4"], warmup=1, steps=1,
    windows=1,
)  # fmt: skip


@pytest.fixture(scope="module")
def result():
    return sweep.measure(TINY, log_progress=False)


def test_every_mode_has_a_row(result):
    rows = result["rows"]
    assert result["failed"] == []
    got = {(r["arch"], r["mode"], r["replicas"]) for r in rows}
    want = {("dense", m, 1) for m in ("eager", "nosync", "graph", "stacked")}
    want |= {("dense", "stacked", 2), ("dense", "vmap", 8), ("moe", "eager", 1)}
    want |= {("moe", "stacked", 2)}
    assert got == want
    for r in rows:
        assert r["step_s"] > 0 and r["tokens_per_s"] > 0
        assert r["tokens_per_s_per_model"] == pytest.approx(r["tokens_per_s"] / r["replicas"])
        assert 0 < r["ceiling_share"] < 5  # counted FLOPs over a measured matmul rate
        assert r["speedup"] > 0
        assert not r["captured"]  # no CUDA graphs on the CPU
    assert result["ceiling"]["dtype"] == "float32" and result["ceiling"]["flops"] > 0


def test_cli_writes_json_and_figure_and_refuses_bad_input(result, tmp_path, capsys):
    src = tmp_path / "sweep.json"
    src.write_text(json.dumps(result))
    svg = tmp_path / "sweep.svg"
    assert sweep.main(["--from-json", str(src), "--figure", str(svg)]) == 0
    assert svg.read_text().startswith("<svg")
    assert sweep.main(["--preset", "cpu", "--sizes", "t9", "--out", str(tmp_path / "x")]) == 2
    assert "unknown ['t9']" in capsys.readouterr().err
    assert sweep.main(["--from-json", str(tmp_path / "missing.json"), "--figure", str(svg)]) == 2
