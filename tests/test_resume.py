"""Resume as the README promises: `kill -9` of the main command, then the same command again.

The README's command is `uv run snakemake results/scaling/moe_vs_dense.svg --cores all`, with no
profile, config or unlock flag. The test runs exactly those arguments (the interpreter running the
tests is the project's uv environment, standing in for `uv run`) in a copy of the workflow tree
(Snakefile, profiles/, workflow/) whose embedded default config is the smoke config with the
headline sweep cut to 1024 and 10k tokens (long enough to be killed mid-training), so that the
default profile, the default config lookup and the stale-lock handling are the ones a user gets,
at the cost of a small graph.
"""

from __future__ import annotations

import csv
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

from nanigpt.graph.config import resolve_runs, sweep_run_ids, validate_config
from tests.workflow_util import REPO, TARGET, load_smoke, snakemake_env, write_config

pytestmark = pytest.mark.slow

README_COMMAND = ["snakemake", TARGET, "--cores", "all"]
LONG_TOKENS = 10_000  # 157 steps of 64 tokens: checkpoints every 16 steps


def workflow_tree(dest: Path, config: dict) -> Path:
    """A copy of the repo's workflow tree whose workflow/config/default.yaml is `config`."""
    dest.mkdir()
    shutil.copy2(REPO / "Snakefile", dest / "Snakefile")
    for name in ("workflow", "profiles"):
        shutil.copytree(REPO / name, dest / name, symlinks=True)
    write_config(dest / "workflow" / "config" / "default.yaml", config)
    return dest


def checkpoints(runs: Path, pattern: str) -> list[Path]:
    """The finished checkpoints (either format: torch's or the Rust writer's) of matching runs."""
    from nanigpt.training.checkpoint.policy import FILES

    return [p for name in FILES.values() for p in runs.glob(f"{pattern}/{name}")]


def test_readme_command_resumes_every_killed_run(tmp_path):
    assert "--cores all" in (REPO / "README.md").read_text(), "README's command changed"
    raw = load_smoke()
    raw["sweeps"]["scaling"]["tokens"] = [1024, LONG_TOKENS]  # 12 runs: 6 per fit, 2 budgets
    tree = workflow_tree(tmp_path / "tree", raw)
    cmd = [sys.executable, "-m", *README_COMMAND]
    proc = subprocess.Popen(
        cmd, env=snakemake_env(), cwd=tree, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    runs = tree / "results" / "runs"
    try:
        deadline = time.monotonic() + 300
        while not checkpoints(runs, "*_t10k_single"):  # killed after a checkpoint
            assert proc.poll() is None, "snakemake ended before a long run checkpointed"
            assert time.monotonic() < deadline, "no long run ever checkpointed"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert list((tree / ".snakemake" / "locks").glob("*.lock")), "kill -9 left no lock to test"
    checkpointed = {p.parent.name for p in checkpoints(runs, "*")}
    unfinished = {r for r in checkpointed if not (runs / r / "summary.json").exists()}
    assert unfinished, "the kill left no run with a checkpoint and no summary"

    rerun = subprocess.Popen(
        cmd, env=snakemake_env(), cwd=tree, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _, stderr = rerun.communicate(timeout=600)
    finally:
        if rerun.poll() is None:  # leave no trainer behind
            os.killpg(rerun.pid, signal.SIGKILL)
            rerun.wait()
    assert rerun.returncode == 0, stderr[-4000:]
    assert "removed the stale locks of a killed Snakemake" in stderr
    assert (tree / TARGET).exists()
    for run_id in unfinished:
        summary = json.loads((runs / run_id / "summary.json").read_text())
        assert summary["resumed_from_step"] and summary["resumed_from_step"] > 0, run_id
        assert not checkpoints(runs, run_id)

    # On the built graph: the run table lists every declared run, with the benchmark of each job
    # run; nothing is stale; bumping the sweep's `version:` reruns exactly its runs.
    show = subprocess.run(
        [sys.executable, "-m", "nanigpt.graph.runtable", "show", "--format", "csv"],
        cwd=tree, env=snakemake_env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = {r["run_id"]: r for r in csv.DictReader(show.stdout.splitlines())}
    config = validate_config(raw)
    assert set(rows) == set(resolve_runs(config))
    headline = set(sweep_run_ids(config, "scaling"))
    assert {rows[r]["state"] for r in headline} == {"done"}
    assert all(float(rows[r]["job_s"]) > 0 for r in headline - unfinished)
    stale = subprocess.run(
        [sys.executable, "-m", "nanigpt.graph.runtable", "stale"],
        cwd=tree, env=snakemake_env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert stale.stdout == ""
    assert planned_train_runs(tree) == set()
    raw["sweeps"]["scaling"]["version"] = 2
    write_config(tree / "workflow" / "config" / "default.yaml", raw)
    assert planned_train_runs(tree) == headline


def planned_train_runs(tree: Path) -> set[str]:
    """The run ids whose training a run of the README's target would (re)run: the train_run jobs
    of the DAG Snakemake would run (`--dag dot`; a job that needs no run is drawn dashed)."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--dag", "dot", TARGET], cwd=tree,
        env=snakemake_env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    nodes = re.findall(r'\[label = "train_run\\nrun_id: (\w+)".*?style="([^"]*)"', result.stdout)
    return {run_id for run_id, style in nodes if "dashed" not in style}
