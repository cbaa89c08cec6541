"""workflow/config/h200_study.yaml (issue 29) meets its design, costed by nanigpt.scaling.cost."""

from __future__ import annotations

import math

from nanigpt.graph.config import REPO_ROOT, load_config, resolve_runs
from nanigpt.model.flops import count
from nanigpt.scaling.cost import held_out_ratio, main, run_costs, table

STUDY = REPO_ROOT / "workflow" / "config" / "h200_study.yaml"
TARGET_FLOP_PER_S = 0.25 * 788e12  # the sweep-speed issue's target on one H200


def test_the_study_spans_two_decades_with_its_budgets_seeds_and_lr_grid():
    config = load_config(STUDY)
    runs = resolve_runs(config)
    study = config["sweeps"][config["scaling"]["sweep"]]
    n = {s: count(next(r for r in runs.values() if r["size"] == s)["model"]).params
         .non_embedding_active for s in study["sizes"]}  # fmt: skip
    smallest, largest = min(n.values()), max(n.values())
    assert len(study["sizes"]) >= 6 and largest / smallest >= 100
    assert min(study["tokens"]) / smallest >= 100  # every budget of the smallest size
    assert max(study["tokens"]) / largest >= 20
    held = config["sweeps"][config["scaling"]["held_out"]]
    assert len(study["seeds"]) >= 2 and len(held["seeds"]) >= 2
    assert set(study["archs"]) == set(held["archs"]) == {"dense", "moe"}
    lrs = sorted(config["sweeps"]["lr_probe"]["lrs"])
    assert all(abs(b / a / math.sqrt(2) - 1) < 0.02 for a, b in zip(lrs, lrs[1:], strict=False))


def test_the_study_fits_two_ten_minute_calls_at_the_target_speed():
    config = load_config(STUDY)
    rows = run_costs(config)
    groups = table(rows, TARGET_FLOP_PER_S)
    total_s = sum(g["wall_s"] for g in groups)
    assert total_s < 800  # of 1200 s: the rest for data, start-up and compilation
    assert all(r >= 10 for r in held_out_ratio(config).values())


def test_a_wsd_job_costs_its_stable_run_and_cooldowns(capsys):
    """The CPU default's held-out job: h6 to step 614 (80% of 768), then cooldowns of 154 and
    19 steps (20% of 768 and of 96)."""
    config = load_config()
    (row,) = [r for r in run_costs(config) if r["sweep"] == "scaling_held_out"]
    assert row["steps"] == 614 + 154 + 19
    assert main([str(STUDY), "--sweeps", "held_out"]) == 0
    assert "10.4x the largest fitted run's compute" in capsys.readouterr().out
    assert main([str(STUDY), "--mfu", "2"]) == 2
