"""The checkpoint-stall benchmark (nanigpt.bench.checkpoint) on the CPU: rows, verification, bad input."""

from __future__ import annotations

import json

from nanigpt.bench import checkpoint as bench


def test_bench_writes_rows_for_each_method_into_a_folder_it_makes(tmp_path):
    out = tmp_path / "out" / "checkpoint.parquet"
    code = bench.main(
        ["--sizes-mb", "1", "--repeats", "2", "--methods", "torch_sha256", "rust",
         "--dir", str(tmp_path / "not" / "yet"), "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    rows = json.loads(out.with_suffix(".json").read_text())
    assert {r["method"] for r in rows} == {"torch_sha256", "rust"}
    assert all(r["blocked_s"] > 0 and r["durable_s"] >= r["blocked_s"] for r in rows)
    assert any(r["verified"] for r in rows)  # the bytes on disk were checked
    assert out.exists() and out.with_suffix(".svg").exists()


def test_bench_refuses_a_size_that_is_not_positive(tmp_path, capsys):
    assert bench.main(["--sizes-mb", "0", "--out", str(tmp_path / "c.parquet")]) == 2
    assert "--sizes-mb" in capsys.readouterr().err
