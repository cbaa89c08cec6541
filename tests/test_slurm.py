"""The graph on a real SLURM cluster: a single-node cluster started on this machine by
scripts/slurm-local.sh, driven through workflow/profiles/slurm (snakemake-executor-plugin-slurm).

- The smoke graph's data stages and one dense and one MoE run through SLURM give the same runs
  (losses to 1e-6; CPU training is seeded) as the session's local build of the whole smoke graph
  (tests/conftest.py `smoke_build`); the SLURM wall time is printed and written to
  $NANIGPT_SLURM_TIMINGS when that is set.
- A job made to fail (tests/slurm_workflow, part 3) is reported with its log while the other jobs
  finish (--keep-going); after the fix, a rerun submits only what is missing.
- A two-process torch.distributed job runs as ONE SLURM job with two tasks, started by
  `python -m nanigpt.launch` (srun + torchrun, rendezvous on the allocation's first node).

The cluster tests need the SLURM executor plugin (`uv sync --group slurm`; `.ci/run` installs it),
root (the daemons run as root) and slurm-wlm + munge, which the script installs with apt-get when
they are missing; without any of these they are skipped, saying why.
The launcher's planning is unit-tested here too, without a cluster.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from nanigpt.launch import Allocation, LaunchError, plan, slurm_allocation, torchrun_command
from tests.workflow_util import REPO, load_smoke, snakemake, snakemake_env, write_config

SCRIPT = REPO / "scripts" / "slurm-local.sh"
PROFILE = REPO / "workflow" / "profiles" / "slurm"
MINI = REPO / "tests" / "slurm_workflow" / "Snakefile"
# The user's profile polls squeue every 10 s (Snakemake's default); on the one-node test cluster
# each job then waits up to that long to be seen finished, along every chain of the graph. The
# tests poll every second: what they check does not depend on the interval.
FAST_POLL = ("--seconds-between-status-checks", "1")
SLURM_TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "srun", "scontrol")
# Summary fields that measure time or memory: they differ between any two runs.
UNSTABLE = {
    "wall_s",
    "tokens_per_s",
    "step_time_s_median",
    "peak_memory_bytes",
    "mfu",
    "comm_s_median",  # the time spent waiting on gradient collectives: a timing too
}


def _have(tool: str) -> bool:
    return shutil.which(tool) is not None or Path("/usr/sbin", tool).exists()


def cluster_skip_reason() -> str | None:
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "the SLURM executor plugin is not installed: `uv sync --group slurm`"
    if os.geteuid() != 0:
        return "not root: scripts/slurm-local.sh runs munged, slurmctld and slurmd as root"
    if not all(_have(t) for t in SLURM_TOOLS) and shutil.which("apt-get") is None:
        return "slurm-wlm/munge are not installed and apt-get is not available to install them"
    return None


@pytest.fixture(scope="module")
def cluster():
    """A running single-node SLURM cluster; stopped afterwards unless it was up before."""
    reason = cluster_skip_reason()
    if reason:
        pytest.skip(reason)
    # Jobs import nanigpt from this checkout even while its editable install is being rewritten.
    saved_pythonpath = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), saved_pythonpath]))
    was_up = subprocess.run([str(SCRIPT), "status"], capture_output=True).returncode == 0
    up = subprocess.run([str(SCRIPT), "up"], capture_output=True, text=True, timeout=900)
    assert up.returncode == 0, f"slurm-local.sh up failed:\n{up.stdout}\n{up.stderr}"
    yield
    if saved_pythonpath is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = saved_pythonpath
    if not was_up:
        down = subprocess.run([str(SCRIPT), "down"], capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, f"slurm-local.sh down failed:\n{down.stderr}"


def mini(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the test-only workflow through the SLURM profile in `workdir`."""
    cmd = [
        sys.executable, "-m", "snakemake", "-s", str(MINI), "-d", str(workdir),
        "--workflow-profile", str(PROFILE), *FAST_POLL, *args,
    ]  # fmt: skip
    result = subprocess.run(
        cmd, capture_output=True, text=True, env=snakemake_env(), cwd=workdir, timeout=600
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def submitted(result: subprocess.CompletedProcess) -> int:
    return len(re.findall(r"has been submitted with SLURM jobid", result.stdout + result.stderr))


def close(a, b, path: str = "") -> list[str]:
    """Where two JSON-like values differ (numbers to 1e-6, relative for large ones)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))} differ"]
        return [d for k in a for d in close(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: lengths {len(a)} != {len(b)}"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in close(x, y, f"{path}[{i}]")
        ]
    if isinstance(a, int | float) and isinstance(b, int | float):
        if math.isnan(a) and math.isnan(b):
            return []
        ok = math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
        return [] if ok else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def compare_builds(local: Path, slurm: Path) -> None:
    """Every run of the SLURM build equals the local build's run of that id (summary and metrics;
    the local build, the whole smoke graph, holds more runs)."""
    runs_slurm = sorted(p.name for p in (slurm / "results/runs").iterdir())
    runs_local = {p.name for p in (local / "results/runs").iterdir()}
    assert runs_slurm and set(runs_slurm) <= runs_local, set(runs_slurm) - runs_local
    diffs = []
    for run in runs_slurm:
        a = json.loads((local / "results/runs" / run / "summary.json").read_text())
        b = json.loads((slurm / "results/runs" / run / "summary.json").read_text())
        for d in (a, b):
            d.pop("provenance")
            for key in [k for k in d if k in UNSTABLE or re.search(r"_s(_median)?$", k)]:
                d.pop(key)  # every seconds-valued field is a timing
        diffs += close(a, b, f"{run}/summary.json")
        ma = pl.read_parquet(local / "results/runs" / run / "metrics.parquet")
        mb = pl.read_parquet(slurm / "results/runs" / run / "metrics.parquet")
        assert ma.columns == mb.columns and ma.height == mb.height, run
        cols = [c for c in ma.columns if re.search(r"loss|bpb|grad_norm|^lr$|^step$|tokens$", c)]
        assert any("loss" in c for c in cols), f"{run}: no loss column in {ma.columns}"
        diffs += close(ma.select(cols).to_dicts(), mb.select(cols).to_dicts(), f"{run}/metrics")
    assert not diffs, "SLURM and local builds differ:\n" + "\n".join(diffs[:30])


# Through SLURM, the smoke graph's data, tokenizer and token stages and one dense and one MoE run:
# each job there is a batch job that starts Snakemake again, so the whole headline (about 40 jobs)
# took 190 s here against 115 s for all of `all` locally. The rules after training (aggregate, fit,
# figures) are the same one-CPU jobs as the data stages, so the runs are what is compared.
SLURM_TARGETS = [
    f"results/runs/tiny_{arch}_a_t1024_single/summary.json" for arch in ("dense", "moe")
]


@pytest.mark.slow
def test_smoke_graph_through_slurm_matches_local(cluster, smoke_build, tmp_path):
    slurm = tmp_path / "slurm"
    slurm.mkdir()
    config = write_config(slurm / "smoke.yaml", load_smoke())
    started = time.monotonic()
    snakemake(slurm, "--workflow-profile", str(PROFILE), *FAST_POLL, *SLURM_TARGETS, config=config)
    times = {"slurm": round(time.monotonic() - started, 1)}
    print(f"smoke graph's runs through SLURM: {times['slurm']} s")
    if os.environ.get("NANIGPT_SLURM_TIMINGS"):
        Path(os.environ["NANIGPT_SLURM_TIMINGS"]).write_text(json.dumps(times) + "\n")
    compare_builds(smoke_build, slurm)
    assert sorted(p.name for p in (slurm / "results/runs").iterdir()) == sorted(
        t.split("/")[2] for t in SLURM_TARGETS
    )
    again = snakemake(
        slurm, "--workflow-profile", str(PROFILE), "-n", *SLURM_TARGETS, config=config
    )
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_failed_job_is_reported_and_the_rest_goes_on(cluster, tmp_path):
    (tmp_path / "FAIL_3").touch()
    # --retries 0: the profile retries once, which would only run the same failure twice.
    failed = mini(tmp_path, "--retries", "0", "gather.txt", check=False)
    text = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert "part 3: injected failure" in text, f"the failed job's log is not shown:\n{text[-3000:]}"
    error = re.search(r"Error in rule part:.*?output: parts/3.txt", text, flags=re.DOTALL)
    assert error, f"the failed job is not reported:\n{text[-3000:]}"
    assert "slurm_logs" in text, "the SLURM log of the failed job is not named"
    for i in (1, 2, 4):
        assert (tmp_path / f"parts/{i}.txt").exists(), f"part {i} did not run (--keep-going)"
    assert not (tmp_path / "parts/3.txt").exists() and not (tmp_path / "gather.txt").exists()

    (tmp_path / "FAIL_3").unlink()
    dry = mini(tmp_path, "-n", "gather.txt")
    planned = re.findall(r"^rule (\w+):", dry.stdout, flags=re.MULTILINE)
    assert sorted(planned) == ["gather", "part"], planned
    assert "wildcards: i=3" in dry.stdout
    rerun = mini(tmp_path, "gather.txt")
    assert submitted(rerun) == 2, rerun.stdout[-3000:]
    assert (tmp_path / "gather.txt").read_text().split() == ["1", "2", "3", "4"]


@pytest.mark.slow
def test_two_process_job_runs_as_one_slurm_job_with_two_tasks(cluster, tmp_path):
    result = mini(tmp_path, "allreduce_mpi.json", "allreduce_step.json")
    assert submitted(result) == 2
    for mode in ("mpi", "step"):
        out = json.loads((tmp_path / f"allreduce_{mode}.json").read_text())
        assert out["world_size"] == 2 and out["sum"] == 3.0, out
        assert len({r["pid"] for r in out["ranks"]}) == 2
        job = subprocess.run(
            ["scontrol", "show", "job", "--oneliner", out["slurm_job_id"]],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert "NumTasks=2" in job, job
        log = (tmp_path / f"logs/allreduce_{mode}.log").read_text()
        assert "nanigpt.launch: srun" in log and "--rdzv-endpoint" in log, log[-2000:]


# The launcher's decisions, without a cluster.


def test_one_process_runs_in_process():
    assert plan(1, ["nanigpt.train", "--x"], {}) is None


def test_local_multi_process_is_standalone_torchrun():
    cmd = plan(2, ["mod", "--a", "1"], {})
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nnodes"]
    assert cmd[-6:] == ["--max-restarts", "0", "-m", "mod", "--a", "1"]
    assert cmd[cmd.index("--nproc-per-node") + 1] == "2"


def test_slurm_allocation_across_nodes_uses_srun_and_a_rendezvous():
    env = {
        "SLURM_JOB_ID": "42",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NTASKS": "8",
        "SLURM_JOB_NODELIST": "gpu[01-02]",
        "SLURM_CPUS_ON_NODE": "32",
    }
    alloc = slurm_allocation(env, hostnames=lambda nodelist: ["gpu01", "gpu02"])
    assert alloc == Allocation("42", ["gpu01", "gpu02"], 8, 32, in_step=False)
    cmd = plan(8, ["nanigpt.train"], env, alloc, port=29400)
    assert cmd[:9] == [
        "srun", "--nodes", "2", "--ntasks", "2", "--ntasks-per-node", "1", "--cpus-per-task", "32",
    ]  # fmt: skip
    assert "--overlap" not in cmd
    assert cmd[cmd.index("--rdzv-endpoint") + 1] == "gpu01:29400"
    assert cmd[cmd.index("--nproc-per-node") + 1] == "4"
    assert cmd[cmd.index("--nnodes") + 1] == "2"


def test_inside_a_job_step_the_job_is_read_from_scontrol():
    env = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "1", "SLURM_NNODES": "1"}
    info = {"NumNodes": "1", "NumTasks": "2", "NodeList": "vm", "NumCPUs": "2"}
    alloc = slurm_allocation(env, job_info=lambda job: info, hostnames=lambda nodelist: ["vm"])
    assert alloc == Allocation("7", ["vm"], 2, 2, in_step=True)
    cmd = plan(2, ["m"], env, alloc, port=1234)
    assert cmd[0] == "srun" and "--overlap" in cmd


def test_uneven_split_is_a_clear_error():
    with pytest.raises(LaunchError, match="do not split evenly"):
        torchrun_command(3, 2, ["m"], rdzv_endpoint="h:1")
    with pytest.raises(LaunchError, match="no module"):
        plan(2, [], {})
