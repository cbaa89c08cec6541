"""The trainer under torchrun (issue 8's wiring, question 2): a run whose parallelism has world size 2
trains through the CLI, writes every output and comm.json, and follows the one-process run.

Two launches of `python -m torch.distributed.run --standalone --nproc-per-node 2 -m nanigpt.train`
(gloo, CPU, 1 thread per rank, ~10 s each): hand-written DDP on a dense model, compared with the
same run in one process (the same global batch of 8 rows, as one batch); expert parallelism on an
MoE model, compared with one process taking the global batch as 2 micro-batches of 4 rows (what
the two ranks see: the MoE balance loss is a product of batch means, so it is not the same on 8
rows as on two halves of 4, and only the micro-batch split makes the runs comparable).

Tolerance: |loss - one process| <= 1e-5 nats at each of 8 AdamW steps, the same bound and reasoning
as tests/test_parallel.py: the only differences are fp32 summation orders (an all_reduce sum of two
halves instead of one sum; experts computed on another rank), about 1e-7 relative per step (seen:
<= 3e-7 after 12 steps). 1e-5 leaves a 30x margin and is 1000x below the loss change per step
(~0.1 here), so a wrong reduction (a sum instead of a mean, a missing gradient bucket, a rank
training on the wrong rows) fails. The gathered model.pt is held to 1e-5 as well.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from nanigpt.train import train
from tests.test_train import SEQ, make_run, write_tiny_data

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5
STEPS = 8


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return write_tiny_data(tmp_path_factory.mktemp("data"))


def _torchrun(run: dict, data: dict, out: Path) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "-m", "nanigpt.train", "--run-config", json.dumps(run), "--train", str(data["train"]),
        "--val", str(data["val"]), "--ground-truth", str(data["gt"]), "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    return proc


def _compare(out: Path, ref: Path) -> list[dict]:
    rows = pq.read_table(out / "metrics.parquet").to_pylist()
    ref_rows = pq.read_table(ref / "metrics.parquet").to_pylist()
    assert len(rows) == len(ref_rows) == STEPS
    for r, q in zip(rows, ref_rows, strict=True):
        assert abs(r["loss"] - q["loss"]) <= TOL, (r["step"], r["loss"], q["loss"])
        assert r["grad_norm"] == pytest.approx(q["grad_norm"], rel=TOL)
        assert r["lr"] == q["lr"] and r["tokens"] == q["tokens"]
        assert (r["val_loss"] is None) == (q["val_loss"] is None)
        if r["val_loss"] is not None:
            assert abs(r["val_loss"] - q["val_loss"]) <= TOL
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.3  # it did train
    weights = torch.load(out / "model.pt", weights_only=True)
    ref_weights = torch.load(ref / "model.pt", weights_only=True)
    assert weights.keys() == ref_weights.keys()
    for key, value in ref_weights.items():
        assert weights[key].shape == value.shape
        assert (weights[key] - value).abs().max() <= TOL, key
    return rows


@pytest.mark.slow
def test_two_rank_ddp_run_matches_one_process(data, tmp_path):
    run = make_run(tokens=STEPS * 8 * SEQ, profile=True, eval_every=4)
    run["parallelism"] = {"dp": 2, "fsdp": 1, "tp": 1, "ep": 1, "strategy": "ddp_manual"}
    out = tmp_path / "ddp"
    proc = _torchrun(run, data, out)
    assert "x 2 ranks (ddp_manual)" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "comm.json",
        "config.json",
        "metrics.parquet",
        "model.pt",
        "summary.json",
        "trace.json.gz",
    ]  # fmt: skip; and checkpoint.pt deleted on success

    single = make_run(tokens=STEPS * 8 * SEQ, eval_every=4)  # world 1, batch 8 in one piece
    train(single, data["train"], data["val"], data["gt"], tmp_path / "single")
    rows = _compare(out, tmp_path / "single")

    # the ledger: DDP all-reduces exactly the gradient bytes each step, and the step breakdown
    # carries its communication (the wait at the end of backward is the exposed part)
    comm = json.loads((out / "comm.json").read_text())
    param_bytes = comm["expected_bytes_per_step"]["all_reduce"]
    assert param_bytes == sum(v.numel() * 4 for v in torch.load(out / "model.pt").values())
    assert comm["world_size"] == 2 and comm["link_model"]["source"].startswith("calibrated")
    assert [s["comm_bytes"] for s in comm["steps"]] == [param_bytes] * STEPS
    for r in rows:
        assert r["comm_bytes"] == param_bytes and r["comm_predicted_s"] > 0
        assert r["comm_measured_s"] > 0 and 0 <= r["comm_blocked_s"] <= r["comm_measured_s"]
        assert r["comm_s"] >= 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["strategy"] == "ddp_manual"
    assert summary["comm_bytes_per_step"] == param_bytes


@pytest.mark.slow
def test_two_rank_expert_parallel_run_gathers_the_experts(data, tmp_path):
    def moe_run(**training) -> dict:
        run = make_run(tokens=STEPS * 8 * SEQ, eval_every=4, **training)
        run.update(arch="moe", arch_kind="moe")
        run["model"]["moe"] = {"num_experts": 4, "top_k": 1, "capacity_factor": None}
        return run

    run = moe_run()
    run["parallelism"] = {"dp": 1, "fsdp": 1, "tp": 1, "ep": 2, "strategy": "ep"}
    out = tmp_path / "ep"
    proc = _torchrun(run, data, out)
    assert "checkpointing is off under strategy 'ep'" in proc.stderr  # sharded experts
    assert (out / "comm.json").exists() and (out / "summary.json").exists()
    # one process, the global batch as the two ranks' halves; the same 16 validation windows
    reference = moe_run(batch_size=4, grad_accum=2, eval_batches=4)
    train(reference, data["train"], data["val"], data["gt"], tmp_path / "single")
    rows = _compare(out, tmp_path / "single")
    for r in rows:
        assert r["moe_dropped_frac"] == 0.0  # dropless
        assert r["moe_load_cv"] >= 0 and r["moe_router_entropy"] > 0
        assert r["comm_bytes"] > 0
    ops = {rec["op"] for rec in json.loads((out / "comm.json").read_text())["records"]}
    assert "all_to_all" in ops and "all_reduce" in ops


@pytest.mark.slow
def test_killed_two_rank_ddp_run_resumes_from_rank_0s_checkpoint(data, tmp_path):
    """kill -9 of the whole torchrun process group mid-run, then the same command again: the ranks
    resume from the checkpoint rank 0 wrote and end exactly where an uninterrupted run ends."""
    import signal
    import time

    steps = 300
    run = make_run(tokens=steps * 8 * SEQ, checkpoint_every=20, eval_every=100)
    run["parallelism"] = {"dp": 2, "fsdp": 1, "tp": 1, "ep": 1, "strategy": "ddp_builtin"}
    out = tmp_path / "killed"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "-m", "nanigpt.train", "--run-config", json.dumps(run), "--train", str(data["train"]),
        "--val", str(data["val"]), "--ground-truth", str(data["gt"]), "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not (out / "checkpoint.safetensors").exists():  # the default format: rust
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "the run never wrote a checkpoint"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "summary.json").exists()

    again = _torchrun(run, data, out)
    assert "resuming from" in again.stderr, again.stderr[:3000]
    resumed_at = int(again.stderr.split("resuming from")[1].split("at step ")[1].split("/")[0])
    assert 0 < resumed_at < steps and resumed_at % 20 == 0
    straight = tmp_path / "straight"
    _torchrun(run, data, straight)
    keys = ("step", "loss", "grad_norm", "lr", "val_loss")
    rows = [{k: r[k] for k in keys} for r in pq.read_table(out / "metrics.parquet").to_pylist()]
    ref = [{k: r[k] for k in keys} for r in pq.read_table(straight / "metrics.parquet").to_pylist()]
    assert rows == ref  # bit for bit: same rows, same all_reduce order on gloo
    assert json.loads((out / "summary.json").read_text())["resumed_from_step"] == resumed_at
    assert not list(out.glob("checkpoint.*"))


def test_metrics_are_reduced_where_the_backend_reduces(monkeypatch):
    """NCCL reduces only CUDA tensors: the validation loss (a host float) must move to the GPU
    before the all_reduce. On 2 H100s it did not, and every NCCL run died at its first eval."""
    from nanigpt.training.ranks import collective_device

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert collective_device("nccl") == torch.device("cuda", 1)
    assert collective_device("gloo") == torch.device("cpu")
