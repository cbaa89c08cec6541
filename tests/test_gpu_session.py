"""scripts/gpu_session.py: the plan it resolves here and the way it spreads jobs over GPUs there.

The device machine has no Snakemake, so the script replays the rules' CLIs; these tests hold its plan
to the graph's (the MoE analysis tasks of moe.smk) and its scheduler to its promises (one job per
GPU slot, a failure reported without stopping the others, nothing started after the deadline).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_session():
    spec = importlib.util.spec_from_file_location(
        "gpu_session", ROOT / "scripts" / "gpu_session.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plan_lists_the_runs_and_the_moe_analysis_of_the_graph(gpu_session, tmp_path):
    out = tmp_path / "plan.json"
    gpu_session.plan(str(ROOT / "workflow/config/smoke.yaml"), out)
    plan = json.loads(out.read_text())
    from nanigpt.graph.config import load_config, resolve_runs

    runs = resolve_runs(load_config(ROOT / "workflow/config/smoke.yaml"))
    assert set(plan["runs"]) == set(runs)
    tasks = {t["run_id"]: t["eval_dataset"] for t in plan["moe_analysis"]}
    assert tasks and all(runs[r]["arch_kind"] == "moe" for r in tasks)
    # the single-source control is scored on the mixture's text, as moe.smk does
    control = [r for r in tasks if runs[r]["dataset"] == "solo"]
    assert control and all(tasks[r] == "tiny" for r in control)


def test_jobs_spread_over_gpu_slots_and_a_failure_does_not_stop_the_rest(gpu_session, tmp_path):
    show = "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"
    jobs = [(f"job{i}", [sys.executable, "-c", show], tmp_path / f"job{i}.log") for i in range(4)]
    jobs.insert(1, ("bad", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "bad.log"))
    timings: dict[str, float] = {}
    with pytest.raises(SystemExit, match="failed \\(3\\)"):
        gpu_session._on_gpus(jobs, gpus=2, timings=timings, per_gpu=2)
    assert set(timings) == {f"job{i}" for i in range(4)}  # every good job ran despite the failure
    gpus = {(tmp_path / f"job{i}.log").read_text().strip() for i in range(4)}
    assert gpus == {"0", "1"}


def test_nothing_starts_after_the_deadline(gpu_session, tmp_path):
    jobs = [("late", [sys.executable, "-c", "pass"], tmp_path / "late.log")]
    timings: dict[str, float] = {}
    gpu_session._on_gpus(jobs, gpus=1, timings=timings, deadline=time.monotonic() - 1)
    assert timings == {} and not (tmp_path / "late.log").exists()


def test_large_archive_is_split_into_parts_that_join_back(gpu_session, tmp_path):
    archive = tmp_path / "sweep.tar.gz"
    data = bytes(range(256)) * 40
    archive.write_bytes(data)
    parts = gpu_session.split_archive(archive, part_bytes=4096)
    names = [p.name for p in parts]
    assert names == ["sweep.tar.gz.part00", "sweep.tar.gz.part01", "sweep.tar.gz.part02"]
    assert not archive.exists()
    assert b"".join(p.read_bytes() for p in parts) == data
    assert gpu_session.split_archive(parts[-1], part_bytes=4096) == [parts[-1]]  # small: kept


def test_replayed_commands_are_the_rules_commands():
    from nanigpt.graph import commands

    rule = commands.moe_specialization("r", "v.bin", "s.json", 64, counts="c.parquet")
    replayed = commands.moe_specialization("r", "v.bin", "s.json", 64, threads=4, python="py")
    assert rule[1:] == ["-m", "nanigpt.analysis.specialization", "--run-dir", "r", "--val", "v.bin",
                        "--out", "s.json", "--counts", "c.parquet", "--max-tokens", "64"]  # fmt: skip
    assert (
        replayed[0] == "py" and "--no-counts" in replayed and replayed[-4:-2] == ["--threads", "4"]
    )
    train = commands.train_run('{"a": 1}', 4, "t.bin", "v.bin", "g.json", "out")
    assert commands.shell(train).startswith(
        "python -m nanigpt.launch --nproc 4 -- nanigpt.train --run-config '{\"a\": 1}' --train t.bin"
    )


def test_pick_lr_gives_each_size_its_best_probe_lr(gpu_session, tmp_path):
    def run(size: str, lr: float) -> dict:
        return {"size": size, "training": {"lr": lr}}

    probe = {
        "runs": {f"{s}_lr{i}": run(s, lr) for s in ("a", "b") for i, lr in enumerate((0.01, 0.03))}
    }
    losses = {"a_lr0": 1.5, "a_lr1": 1.2, "b_lr0": 0.9, "b_lr1": 1.4}
    for run_id, bpb in losses.items():
        (tmp_path / "results/runs" / run_id).mkdir(parents=True)
        (tmp_path / "results/runs" / run_id / "summary.json").write_text(
            json.dumps({"final_val_bpb": bpb})
        )
    sweep = {"runs": {"a_big": run("a", 0.003), "b_big": run("b", 0.003), "c_big": run("c", 0.003)}}
    (tmp_path / "probe.json").write_text(json.dumps(probe))
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    out = tmp_path / "picked.json"
    result = gpu_session.pick_lr(tmp_path / "probe.json", tmp_path / "sweep.json", out, tmp_path)
    assert result["picks"] == {"a": 0.03, "b": 0.01} and result["sizes_without_probe"] == ["c"]
    lrs = {rid: r["training"]["lr"] for rid, r in json.loads(out.read_text())["runs"].items()}
    assert lrs == {"a_big": 0.03, "b_big": 0.01, "c_big": 0.003}


def test_pick_lr_picks_per_arch_when_the_probe_holds_several(gpu_session, tmp_path):
    """h200_study.yaml probes dense and MoE: each arch gets its own lr per size."""

    def run(arch: str, lr: float) -> dict:
        return {"arch": arch, "size": "a", "training": {"lr": lr}}

    probe = {"runs": {f"{a}_lr{i}": run(a, lr) for a in ("dense", "moe")
                      for i, lr in enumerate((0.01, 0.03))}}  # fmt: skip
    losses = {"dense_lr0": 1.5, "dense_lr1": 1.2, "moe_lr0": 0.9, "moe_lr1": 1.4}
    for run_id, bpb in losses.items():
        (tmp_path / "results/runs" / run_id).mkdir(parents=True)
        (tmp_path / "results/runs" / run_id / "summary.json").write_text(
            json.dumps({"final_val_bpb": bpb})
        )
    sweep = {"runs": {"d": run("dense", 0.003), "m": run("moe", 0.003)}}
    (tmp_path / "probe.json").write_text(json.dumps(probe))
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    out = tmp_path / "picked.json"
    result = gpu_session.pick_lr(tmp_path / "probe.json", tmp_path / "sweep.json", out, tmp_path)
    assert result["picks"] == {"dense/a": 0.03, "moe/a": 0.01}
    lrs = {rid: r["training"]["lr"] for rid, r in json.loads(out.read_text())["runs"].items()}
    assert lrs == {"d": 0.03, "m": 0.01}
