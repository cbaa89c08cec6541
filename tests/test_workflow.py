"""The graph as a user drives it: validation before any job, a full smoke build, incremental reruns.

These tests run Snakemake on the smoke config in a scratch folder; the build is shared by the
session (tests/conftest.py `smoke_build`, also the local side of tests/test_slurm.py's comparison),
each rerun check works on its own copy of it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nanigpt.training.checkpoint import policy
from tests.workflow_util import (
    REPO,
    TARGET,
    load_smoke,
    planned_jobs,
    snakemake,
    snakemake_env,
    write_config,
)

pytestmark = pytest.mark.slow

STAGES = {
    "synthetic_data",
    "train_tokenizer",
    "encode_tokens",
    "train_run",
    "aggregate_runs",
    "fit_scaling",
    "plot_moe_vs_dense",
    "plot_fit_residuals",
    "moe_gain_vs_data",
    "bench_tokenizer",
    "plot_rust_bench",
    "hardware_ceilings",
    "profile_run",
    "profile_summary",
    "moe_specialization",
    "moe_heatmap",
    "moe_mi_vs_step",
    "moe_load_vs_capacity",
    "moe_crossover",
    "moe_experts",
    "aggregate_sweep",
    "isoflop_fit",
    "plot_isoflop",
    "plot_loss_curves",
}


@pytest.fixture
def built(smoke_build) -> Path:
    """A working directory in which the whole smoke graph has been built once (per session)."""
    return smoke_build


def copy_build(built: Path, dest: Path) -> Path:
    """A copy of the built folder (outputs and Snakemake's metadata) to change without harm."""
    shutil.copytree(built, dest, symlinks=True, copy_function=shutil.copy2)
    return dest


def test_dry_run_lists_every_stage(tmp_path):
    config = write_config(tmp_path / "smoke.yaml", load_smoke())
    rules = {rule for rule, _ in planned_jobs(tmp_path, config, "all")}
    assert rules >= STAGES
    assert not (tmp_path / "data").exists(), "a dry run must not build anything"


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda c: c["training"].__setitem__("lrr", 0.1), "training.lrr"),
        (lambda c: c["sizes"]["a"].__setitem__("d_model", -4), "sizes.a.d_model"),
    ],
    ids=["misspelled-key", "out-of-range"],
)
def test_bad_config_fails_before_any_job(tmp_path, edit, key):
    raw = load_smoke()
    edit(raw)
    config = write_config(tmp_path / "bad.yaml", raw)
    result = snakemake(tmp_path, "--cores", "1", TARGET, config=config, check=False)
    assert result.returncode != 0
    assert key in result.stdout + result.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


def test_smoke_graph_end_to_end(built):
    assert "<svg" in (built / "results/rust/tokenizer.svg").read_text()[:500]
    svg = (built / TARGET).read_text()
    assert svg.lstrip().startswith("<svg") or "<svg" in svg[:500]
    fits = json.loads((built / "results/scaling/fits.json").read_text())
    assert set(fits) >= {"dense", "moe"}
    for run_dir in (built / "results/runs").iterdir():
        for name in ("config.json", "metrics.parquet", "trace.json.gz", "summary.json"):
            assert (run_dir / name).stat().st_size > 0, f"{run_dir.name}/{name}"
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["run_id"] == run_dir.name
        provenance = summary["provenance"]
        assert {"config_hash", "code_version", "packages", "device"} <= set(provenance)


def test_no_op_rerun_has_nothing_to_do(built):
    for target in (TARGET, "all"):
        jobs = planned_jobs(built, built / "smoke.yaml", target)
        assert jobs == [], f"a rebuilt graph planned {jobs} for {target}"


def test_changing_one_size_reruns_exactly_its_runs(built, tmp_path):
    work = copy_build(built, tmp_path / "w")
    raw = load_smoke()
    changed = copy.deepcopy(raw)
    changed["sizes"]["b"]["d_model"] = 28
    config = write_config(work / "smoke.yaml", changed)
    jobs = planned_jobs(work, config)
    train_runs = {
        re.search(r"run_id: (\S+)", wildcards).group(1)
        for rule, wildcards in jobs
        if rule == "train_run"
    }
    expected = {
        f"tiny_{arch}_b_t{t}_single" for arch in ("dense", "moe") for t in (1024, 2048, 4096)
    }
    assert train_runs == expected
    others = {rule for rule, _ in jobs if rule != "train_run"}
    assert others == {"aggregate_runs", "fit_scaling", "plot_moe_vs_dense"}


def test_changing_the_data_seed_reruns_everything_downstream(built, tmp_path):
    work = copy_build(built, tmp_path / "w")
    changed = load_smoke()
    changed["datasets"]["tiny"]["seed"] = 8
    config = write_config(work / "smoke.yaml", changed)
    rules = [rule for rule, _ in planned_jobs(work, config, "all")]
    assert set(rules) >= STAGES - {"hardware_ceilings"}
    assert rules.count("train_run") == 22  # every run on `tiny`; the `solo` control stays
    assert rules.count("encode_tokens") == 2


def test_killed_training_job_is_not_taken_as_complete(built, tmp_path):
    """SIGKILL Snakemake's whole process group mid-training: the run is planned again, and the
    rerun resumes from the run's last checkpoint instead of step 0, ending with complete outputs."""
    work = copy_build(built, tmp_path / "w")
    raw = load_smoke()
    raw["sweeps"]["scaling"]["tokens"] = [1024, 2048, 4096, 50_000]
    config = write_config(work / "smoke.yaml", raw)
    target = "results/runs/tiny_dense_c_t50k_single/summary.json"
    run_dir = work / "results/runs/tiny_dense_c_t50k_single"
    cmd = [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work),
        "--configfile", str(config), "--cores", "1", target,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=snakemake_env(), cwd=work, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        # killed after its first checkpoint, in either format (torch's or the Rust writer's)
        while not any((run_dir / name).exists() for name in policy.FILES.values()):
            assert proc.poll() is None, "snakemake ended before the run checkpointed"
            assert time.monotonic() < deadline, "the run never checkpointed"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (run_dir / "summary.json").exists()
    planned = planned_jobs(work, config, target)
    assert ("train_run", "run_id: tiny_dense_c_t50k_single") in planned

    snakemake(work, "--unlock", config=config)
    snakemake(work, "--cores", "1", "--rerun-incomplete", target, config=config)
    log = (work / "results/logs/train_run/tiny_dense_c_t50k_single.log").read_text()
    assert "resuming from" in log
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from_step"] > 0
    assert summary["tokens_trained"] >= 50_000


def test_report_holds_the_figures(built, tmp_path):
    work = copy_build(built, tmp_path / "w")
    snakemake(work, "--report", "report.html", config=work / "smoke.yaml")
    html = (work / "report.html").read_text(errors="replace")
    for name in (
        "moe_vs_dense.svg",
        "tokenizer.svg",
        "breakdown.svg",
        "mi_vs_step.svg",
        "isoflop_iso.svg",
        "loss_curves_scaling.svg",
        "loss_curves_iso.svg",
    ):
        assert name in html, f"{name} missing from the report"


def test_isoflop_sweep_and_loss_curves_are_built(built):
    result = json.loads((built / "results/scaling/isoflop_iso.json").read_text())
    entry = result["dense"]
    budgets = entry["budgets"] + entry["skipped_budgets"]
    assert sorted(b["flops"] for b in budgets) == [2.0e8, 4.0e8]
    assert all(len(b["n"]) == 3 for b in budgets)  # sizes a, b and c at each budget
    for sweep in ("iso", "scaling"):
        svg = (built / f"results/scaling/loss_curves_{sweep}.svg").read_text()
        assert "<svg" in svg[:500] and "arch dense" in svg
    assert (
        "IsoFLOP profiles of sweep iso" in (built / "results/scaling/isoflop_iso.svg").read_text()
    )
