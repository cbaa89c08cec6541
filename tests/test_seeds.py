"""Seeds as a sweep dimension (issue 15): `seeds: [...]` on a sweep, one run per seed."""

from __future__ import annotations

import copy
import json

import yaml

from nanigpt.graph.config import (
    DEFAULT_CONFIG_PATH,
    resolve_runs,
    run_settings_json,
    validate_config,
)


def config_with_seeds(seeds: list[int] | None) -> dict:
    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    raw["sweeps"] = {
        "one": {"dataset": "mix", "archs": ["dense", "moe"], "sizes": ["s1"], "tokens": [50000]}
    }
    if seeds is not None:
        raw["sweeps"]["one"]["seeds"] = seeds
    raw["scaling"]["sweep"] = "one"
    for key in ("isoflop", "moe_analysis"):
        raw.pop(key, None)
    return validate_config(raw)


def test_seeds_change_run_ids_and_nothing_else():
    base = resolve_runs(config_with_seeds(None))
    seeded = resolve_runs(config_with_seeds([0, 1, 2]))
    assert set(base) <= set(seeded)  # seed 0 = training.seed: the same ids as without seeds
    for rid in base:
        assert run_settings_json(seeded[rid]) == run_settings_json(base[rid])
        for seed in (1, 2):
            other = copy.deepcopy(seeded[f"{rid}_seed{seed}"])
            assert other["seed"] == other["training"]["seed"] == seed
            other["run_id"], other["seed"], other["training"]["seed"] = rid, 0, 0
            assert run_settings_json(other) == run_settings_json(base[rid])
    assert len(seeded) == 3 * len(base)


def test_a_seed_run_is_shared_by_single_and_multi_seed_sweeps():
    config = config_with_seeds([1, 0])
    raw_two = copy.deepcopy(config)
    raw_two["sweeps"]["two"] = {**raw_two["sweeps"]["one"], "seeds": [0]}
    runs = resolve_runs(raw_two)
    shared = [r for r in runs.values() if r["sweeps"] == ["one", "two"]]
    assert {r["seed"] for r in shared} == {0} and len(shared) == 2
    assert {r["seed"] for r in runs.values() if r["sweeps"] == ["one"]} == {1}


def test_runs_table_has_a_seed_column(tmp_path):
    from nanigpt.scaling.aggregate import aggregate

    base = {
        "arch_kind": "dense",
        "tokens_trained": 1,
        "params_active": 1,
        "params_non_embedding_active": 1,
        "flops_per_token": 1.0,
        "flops_total": 1.0,
        "final_val_bpb": 1.0,
    }
    paths = []
    for rid, extra in (("a", {"seed": 2}), ("b", {})):
        path = tmp_path / f"{rid}.json"
        path.write_text(json.dumps({"run_id": rid, **base, **extra}))
        paths.append(path)
    table = aggregate(paths)
    assert table["seed"].to_list() == [2, None]
    assert aggregate(paths[1:])["seed"].to_list() == [None]
