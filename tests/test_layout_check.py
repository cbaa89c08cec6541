"""Every chart builds with pandas hidden, and no figure's text runs off its canvas or over other
text (issue 26): the checker (nanigpt/plots/layout_check.py) on every chart, on the smoke graph's
figures, and on charts broken on purpose, which it must refuse."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import altair as alt
import pytest

from nanigpt.plots import save_chart
from nanigpt.plots.layout_check import (
    ADVANCES,
    main,
    measure_advances,
    parse_transform,
    problems,
    text_boxes,
)

REPO = Path(__file__).resolve().parent.parent
GALLERY = 21  # the charts tests/chart_gallery.py draws


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("gallery")
    result = subprocess.run(
        [sys.executable, "-m", "tests.chart_gallery", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "imported: pandas False" in result.stdout  # hidden, and nothing got around it
    return sorted(out.glob("*.svg"))


def test_every_chart_builds_with_pandas_hidden(gallery):
    assert len(gallery) == GALLERY
    for path in gallery:
        assert path.read_text().lstrip().startswith("<svg"), path.name


def test_every_chart_fits_its_text(gallery):
    found = {path.name: problems(path.read_text()) for path in gallery}
    assert not {name: lines for name, lines in found.items() if lines}


def test_the_smoke_graphs_figures_fit_their_text(smoke_build):
    svgs = sorted((smoke_build / "results").rglob("*.svg"))
    names = {str(p.relative_to(smoke_build)) for p in svgs}
    assert {"results/rust/trace.svg", "results/rust/verdict.svg"} <= names  # graph targets too
    assert len(svgs) >= 20
    found = {str(p.relative_to(smoke_build)): problems(p.read_text()) for p in svgs}
    assert not {name: lines for name, lines in found.items() if lines}


def _text(rows: list[dict], **mark) -> alt.Chart:
    return (
        alt.Chart(alt.Data(values=rows))
        .mark_text(fontSize=12, **mark)
        .encode(x=alt.X("x:Q", scale=alt.Scale(domain=[0, 10])), y="y:Q", text="t:N")
    )


def test_broken_charts_are_refused(tmp_path):
    long = "a label far too long for the little plot it is written into"
    cases = {
        # two labels written over each other
        "overlap": _text([{"x": 5, "y": 1, "t": "first label"}, {"x": 5.3, "y": 1, "t": "second"}]),
        # a fixed canvas (no autosize) that a left-aligned label runs out of
        "off": _text([{"x": 8, "y": 1, "t": long}], align="left")
        .properties(width=120, height=60)
        .properties(autosize="none"),
        # a label clipped to the plot
        "clipped": _text([{"x": 9, "y": 1, "t": long}], align="left", clip=True),
        # a legend label Vega shortened to its limit
        "truncated": alt.Chart(alt.Data(values=[{"x": 1, "c": long}]))
        .mark_point()
        .encode(x="x:Q", color=alt.Color("c:N", legend=alt.Legend(labelLimit=60))),
    }
    expected = {"overlap": "overlap", "off": "off the canvas", "clipped": "cut by its clip",
                "truncated": "truncated"}  # fmt: skip
    for name, chart in cases.items():
        path = save_chart(chart, tmp_path / f"{name}.svg")
        found = problems(path.read_text())
        assert any(line.startswith(expected[name]) for line in found), (name, found)
    fine = save_chart(
        _text([{"x": 2, "y": 1, "t": "one"}, {"x": 8, "y": 1, "t": "two"}]), tmp_path / "ok.svg"
    )
    assert problems(fine.read_text()) == []
    assert main([str(fine)]) == 0
    assert main([str(fine), str(tmp_path / "overlap.svg")]) == 1
    assert main([str(tmp_path / "missing.svg")]) == 2


def test_rotated_text_stands_upright_and_boxes_follow_their_anchor():
    m = parse_transform("translate(10,100) rotate(-90) translate(0,-2)")
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="200" height="200">'
        '<g transform="translate(20,30)"><text transform="translate(10,100) rotate(-90)"'
        ' text-anchor="middle" font-size="10px">abcdefghij</text>'
        '<text transform="translate(150,10)" text-anchor="end" font-size="10px"'
        ' font-weight="bold">end</text></g></svg>'
    )
    (up, end), canvas = text_boxes(svg)
    assert canvas == (200, 200)
    assert m[4:] == pytest.approx((8, 100))  # translate, then rotate's frame moves the 2 px up
    assert up.x1 - up.x0 < up.y1 - up.y0  # rotated: taller than wide
    assert (up.y0 + up.y1) / 2 == pytest.approx(130)  # centred on its anchor (middle)
    assert end.x1 == pytest.approx(170)  # end-anchored: the box ends at x
    assert end.x1 - end.x0 == pytest.approx(sum(ADVANCES["bold"][c] for c in "end") / 100)


def test_advance_table_is_what_vl_convert_measures():
    sample = "Wi1 .,(x)%α…"
    for weight in ("normal", "bold"):
        measured = measure_advances(sample, weight)
        assert measured == pytest.approx({c: ADVANCES[weight][c] for c in sample}, abs=1)


def test_a_roofline_point_far_below_its_roofs_keeps_its_label_off_the_axis(tmp_path):
    """The default graph's h1 roofline put 'attention (est.)' over the FLOP/s axis's tick labels
    when its point was the lowest value of the chart: the y domain keeps room below it."""
    from nanigpt.plots.layout_check import problems
    from nanigpt.plots.roofline import roofline_chart

    hardware = {"device": "cpu", "matmul_flops_per_s": 1.8e11, "copy_bytes_per_s": 1.5e10}
    points = [
        {
            "category": "matmul",
            "intensity": 3.6,
            "achieved_flops_per_s": 2.7e10,
            "kernel_time_s": 1,
        },
        {
            "category": "attention",
            "intensity": 18,
            "achieved_flops_per_s": 1.0e9,
            "kernel_time_s": 1,
        },
    ]
    path = roofline_chart(points, hardware, {"run_id": "low"}, tmp_path / "roofline.svg")
    assert problems(path.read_text()) == []
