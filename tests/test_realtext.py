"""The real-text dataset: the stdlib's sources, built deterministically with an unknown floor."""

from __future__ import annotations

import json

import polars as pl
import pytest

from nanigpt.data.realtext import RealTextError, RealTextSpec, main
from nanigpt.graph.config import ConfigError, load_config, validate_config


def test_builds_deterministic_labelled_splits(tmp_path):
    spec = '{"kind": "python_stdlib", "seed": 3, "max_bytes": 300000}'
    for out in ("a", "b"):
        assert main(["--name", "py", "--spec-json", spec, "--out", str(tmp_path / out)]) == 0
    for split in ("train", "val"):
        a = pl.read_parquet(tmp_path / "a" / f"{split}.parquet")
        b = pl.read_parquet(tmp_path / "b" / f"{split}.parquet")
        assert a.equals(b) and a.height > 0
        assert set(a.columns) == {"text", "source_id", "doc_id"}
    truth = json.loads((tmp_path / "a" / "ground_truth.json").read_text())
    assert truth["floor_bits_per_byte"] is None
    total = truth["counts"]["train"]["bytes"] + truth["counts"]["val"]["bytes"]
    assert 0 < total <= 300_000
    train_ids = set(pl.read_parquet(tmp_path / "a" / "train.parquet")["doc_id"])
    val_ids = set(pl.read_parquet(tmp_path / "a" / "val.parquet")["doc_id"])
    assert not train_ids & val_ids


def test_bad_spec_names_the_key():
    with pytest.raises(RealTextError, match="val_fraction"):
        RealTextSpec.from_dict({"kind": "python_stdlib", "val_fraction": 1.5})
    config = load_config()
    config["datasets"]["py"] = {"kind": "python_stdlib", "seed": 0, "branching": 4}
    with pytest.raises(
        ConfigError, match=r"datasets\.py: unknown key 'branching'; allowed keys here: kind, "
    ):
        validate_config(config)
