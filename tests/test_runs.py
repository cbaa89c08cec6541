"""Stale results named, the run table, and one-line errors for outputs that cannot be written.

The stale test runs two real CLIs from a copy of the `nanigpt` package (first on PYTHONPATH), edits
a module of the copy that only one of them imported, and asks `nanigpt.graph.runtable stale`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanigpt import fingerprint
from nanigpt.graph import runtable as runs
from nanigpt.graph.config import load_config, resolve_runs, run_settings_json, sweep_run_ids
from nanigpt.io import OutputWriteError, write_text_atomic
from nanigpt.train import main as train_main
from tests.test_train import make_run, write_tiny_data
from tests.workflow_util import REPO, SMOKE_CONFIG

RUN = "tiny_dense_s0_t1k_single"


def _cli(code: Path, workdir: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, *args], cwd=workdir, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow  # two CLI processes that import torch
def test_stale_lists_the_outputs_of_the_code_that_changed(tmp_path, capsys):
    code = tmp_path / "code"
    shutil.copytree(
        REPO / "nanigpt", code / "nanigpt", ignore=shutil.ignore_patterns("__pycache__")
    )
    work = tmp_path / "work"
    data = write_tiny_data(work / "in")
    spec = load_config(SMOKE_CONFIG)["datasets"]["tiny"]
    _cli(code, work, "-m", "nanigpt.data.synthetic", "--name", "tiny", "--spec-json",
         json.dumps(spec), "--out", "data/synthetic/tiny")  # fmt: skip
    run = json.dumps(make_run(tokens=4 * 8 * 16))
    _cli(code, work, "-m", "nanigpt.train", "--run-config", run, "--train", str(data["train"]),
         "--val", str(data["val"]), "--ground-truth", str(data["gt"]),
         "--out", f"results/runs/{RUN}")  # fmt: skip
    records = {r["output"]: r for r in fingerprint.read_records(work)}
    built = {f"results/runs/{RUN}/{name}" for name in
             ("config.json", "metrics.parquet", "trace.json.gz", "model.pt", "summary.json")}  # fmt: skip
    assert built | {"data/synthetic/tiny/ground_truth.json"} <= set(records)
    gpt = records[f"results/runs/{RUN}/summary.json"]["modules"]["nanigpt.model.gpt"]
    assert gpt["file"].startswith(str(code)), "the run did not import the copied package"
    assert "nanigpt.model.gpt" not in records["data/synthetic/tiny/ground_truth.json"]["modules"]
    assert fingerprint.stale_outputs(work) == {}

    with open(code / "nanigpt" / "model" / "gpt.py", "a") as f:
        f.write("\n# an edit\n")
    assert runs.main(["stale", "--workdir", str(work)]) == 0
    listed = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    assert set(listed) == built  # the run's outputs, and nothing the data CLI wrote
    assert all("nanigpt.model.gpt" in modules for modules in listed.values())


def test_show_prints_every_declared_run_with_its_state(tmp_path, capsys):
    config = load_config(SMOKE_CONFIG)
    declared = resolve_runs(config)
    run_dir = tmp_path / "results" / "runs" / "tiny_dense_a_t1024_single"
    run_dir.mkdir(parents=True)
    settings = json.loads(run_settings_json(declared["tiny_dense_a_t1024_single"]))
    (run_dir / "config.json").write_text(json.dumps({"run": settings}))
    (run_dir / "summary.json").write_text(json.dumps({"final_val_loss": 1.5, "wall_s": 2.0}))
    bench = tmp_path / "results" / "benchmarks" / "train_run"
    bench.mkdir(parents=True)
    (bench / "tiny_dense_a_t1024_single.tsv").write_text(
        "s\th:m:s\tmax_rss\tmax_vms\n3.25\t0:00:03\t512.5\t900\n"
    )
    argv = ["show", "--configfile", str(SMOKE_CONFIG), "--workdir", str(tmp_path), "--format"]
    assert runs.main([*argv, "csv"]) == 0
    rows = list(__import__("csv").DictReader(capsys.readouterr().out.splitlines()))
    assert [r["run_id"] for r in rows] == list(declared)
    by_id = {r["run_id"]: r for r in rows}
    done = by_id["tiny_dense_a_t1024_single"]
    assert (done["state"], done["final_val_loss"], done["job_s"], done["job_max_rss_mb"]) == (
        "done", "1.5", "3.25", "512.5",
    )  # fmt: skip
    assert {r["state"] for r in rows if r is not done} == {"to run"}

    assert runs.main([*argv, "table", "--sweep", "iso", "--only-changed"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 1 + len(sweep_run_ids(config, "iso"))
    assert "model.d_model" in table[0] and "training.lr" not in table[0]  # lr is one value

    out = tmp_path / "runs.parquet"
    assert runs.main([*argv, "parquet", "--out", str(out)]) == 0
    import pyarrow.parquet as pq

    assert pq.read_table(out).num_rows == len(declared)


def _fail_writes_into(folder: Path, error: int, monkeypatch, only: str | None = None) -> None:
    """Make every atomic write into `folder` (of file `only`, if given) fail with `error`, as a
    full disk or a read-only folder does (tests run as root, whom chmod does not stop)."""
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).parent == folder and only in (None, Path(dst).name):
            raise OSError(error, os.strerror(error))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize(
    ("error", "only", "advice"),
    [
        (errno.ENOSPC, "checkpoint.pt", "free space on the disk"),  # full mid-training
        (errno.EACCES, None, "writable"),
    ],
    ids=["full-disk", "unwritable-folder"],
)
def test_train_cli_says_in_one_line_what_cannot_be_written(
    tmp_path, monkeypatch, capsys, error, only, advice
):
    data = write_tiny_data(tmp_path / "in")
    out = tmp_path / "run"
    _fail_writes_into(out, error, monkeypatch, only)
    # the Python writer's path (os.replace); the Rust writer's full disk: test_checkpoint_rust.py
    run = json.dumps(make_run(tokens=6 * 8 * 16, checkpoint_every=2, checkpoint_format="torch"))
    argv = ["--run-config", run, "--train", str(data["train"]), "--val", str(data["val"]),
            "--ground-truth", str(data["gt"]), "--out", str(out)]  # fmt: skip
    assert train_main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nanigpt.train: error: cannot write ")
    assert advice in err and os.strerror(error) in err
    assert not list(out.glob(".*.tmp")) and not (out / "summary.json").exists()


def test_a_full_disk_mid_checkpoint_keeps_what_was_built(tmp_path, monkeypatch):
    target = tmp_path / "out" / "checkpoint.pt"
    write_text_atomic(target, "the previous checkpoint")
    _fail_writes_into(target.parent, errno.ENOSPC, monkeypatch)
    with pytest.raises(OutputWriteError, match="No space left on device") as raised:
        write_text_atomic(target, "the next one")
    assert isinstance(raised.value, OSError) and raised.value.errno == errno.ENOSPC
    assert target.read_text() == "the previous checkpoint"
    assert [p.name for p in target.parent.iterdir()] == ["checkpoint.pt"]


@pytest.mark.slow  # a subprocess that imports torch
@pytest.mark.skipif(torch.cuda.is_available(), reason="the noise is that of a machine without CUDA")
def test_profiler_on_the_cpu_logs_no_cuda_error(tmp_path):
    script = (
        "import torch\n"
        "from nanigpt.measure.trace import TraceWindow\n"
        f"with TraceWindow({str(tmp_path / 't.json.gz')!r}, 'cpu', wait=0, warmup=0, active=1) as t:\n"
        "    torch.ones(4).sum(); t.step()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "t.json.gz").exists()
    assert "gpuGetDeviceCount" not in result.stderr and "ERROR" not in result.stderr
