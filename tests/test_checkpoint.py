"""Checkpoints: a run killed at any point resumes and ends with the same result (question 1).

Tiny model on the tiny learnable shards of tests/test_train.py, 1 thread, CPU: resuming is
bit-for-bit (losses, gradient norms, validation losses, final weights), so the tests compare with ==.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from nanigpt.train import main, train
from nanigpt.training.checkpoint import policy, torch_format
from nanigpt.training.checkpoint import state as run_state
from nanigpt.training.checkpoint.torch_format import CheckpointError
from nanigpt.training.config import validate_run
from tests.test_train import SEQ, make_run, write_tiny_data

ROOT = Path(__file__).resolve().parents[1]
COMPARED = ("step", "tokens", "loss", "aux_loss", "lr", "grad_norm", "val_loss", "val_bpb")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return write_tiny_data(tmp_path_factory.mktemp("data"))


def _rows(out: Path) -> list[dict]:
    rows = pq.read_table(out / "metrics.parquet").to_pylist()
    return [{k: r[k] for k in COMPARED} for r in rows]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model.pt", weights_only=True)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Killed(Exception):
    """Stands for a kill right after a checkpoint was written."""


# --- the file format -------------------------------------------------------------------------


def test_round_trip_and_damage_is_detected(tmp_path):
    path = tmp_path / "checkpoint.pt"
    payload = {"step": 3, "model": {"w": torch.arange(6.0)}, "metrics": [{"loss": 1.5, "x": None}]}
    torch_format.save(path, payload)
    loaded = policy.load(path)
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["w"], torch.arange(6.0))
    assert loaded["metrics"] == [{"loss": 1.5, "x": None}]
    raw = path.read_bytes()

    flipped = bytearray(raw)
    flipped[-10] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=rf"{path}: corrupt: sha256"):
        policy.load(path)
    path.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(CheckpointError, match=rf"{path}: truncated"):
        policy.load(path)
    torch.save(payload, path)  # a plain torch file: foreign
    with pytest.raises(CheckpointError, match=rf"{path}: not a naniGPT checkpoint"):
        policy.load(path)


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = run_state.rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    run_state.set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and (first[1] == again[1]).all()
    assert first[2] == again[2]


# --- resuming --------------------------------------------------------------------------------


def test_resume_is_bit_for_bit(data, tmp_path, monkeypatch, caplog):
    """N steps straight == N/2 steps, a kill, then a resumed N/2 (with accumulation, MoE, eval)."""
    run = make_run(
        tokens=12 * 8 * SEQ,
        profile=True,
        grad_accum=2,
        batch_size=4,
        checkpoint_every=6,
        checkpoint_format="torch",
    )
    run.update(arch="moe", arch_kind="moe")
    run["model"]["moe"] = {"num_experts": 4, "top_k": 1, "aux_loss_weight": 0.01}
    straight = tmp_path / "straight"
    train(run, data["train"], data["val"], data["gt"], straight)

    resumed = tmp_path / "resumed"
    real_save = torch_format.save

    def save_then_die(path, payload):
        real_save(path, payload)
        raise Killed

    monkeypatch.setattr(torch_format, "save", save_then_die)
    with pytest.raises(Killed):
        train(run, data["train"], data["val"], data["gt"], resumed)
    monkeypatch.setattr(torch_format, "save", real_save)
    assert policy.load(resumed / "checkpoint.pt")["step"] == 6
    assert not (resumed / "summary.json").exists()
    trace = (resumed / "trace.json.gz").read_bytes()  # the window (steps 1-2) closed before

    with caplog.at_level(logging.INFO, logger="nanigpt.train"):
        summary = train(run, data["train"], data["val"], data["gt"], resumed)
    assert "resuming from" in caplog.text and "at step 6/12" in caplog.text
    assert summary["resumed_from_step"] == 6
    assert _rows(resumed) == _rows(straight)
    assert _same_weights(_weights(resumed), _weights(straight))
    assert not (resumed / "checkpoint.pt").exists()  # complete: deleted
    assert (resumed / "trace.json.gz").read_bytes() == trace  # restored from the checkpoint


def test_corrupt_checkpoint_stops_the_run_naming_the_file(data, tmp_path, capsys):
    run = make_run(tokens=4 * 8 * SEQ)
    out = tmp_path / "run"
    train(run, data["train"], data["val"], data["gt"], out)
    # a checkpoint of the same run, then damaged on disk
    path = out / "checkpoint.pt"
    fingerprint = run_state.run_fingerprint(
        validate_run(run),
        {"train": data["train"], "val": data["val"], "ground_truth": data["gt"]},
    )
    torch_format.save(path, {"fingerprint": fingerprint, "step": 2})
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        train(run, data["train"], data["val"], data["gt"], out)
    argv = ["--run-config", json.dumps(run), "--train", str(data["train"])]
    argv += ["--val", str(data["val"]), "--ground-truth", str(data["gt"]), "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "corrupt" in err and "delete it" in err
    assert path.exists()  # never silently discarded


def test_checkpoint_of_other_settings_is_ignored_with_a_warning(data, tmp_path, caplog):
    out = tmp_path / "run"
    torch_format.save(out / "checkpoint.pt", {"fingerprint": "0" * 64, "step": 3})
    with caplog.at_level(logging.INFO, logger="nanigpt.train"):
        summary = train(make_run(tokens=4 * 8 * SEQ), data["train"], data["val"], data["gt"], out)
    assert "other run settings or inputs" in caplog.text and "starting from step 0" in caplog.text
    assert summary["resumed_from_step"] is None
    assert len(_rows(out)) == 4


def test_snapshots_hold_the_weights_every_k_steps(data, tmp_path):
    out = tmp_path / "run"
    train(
        make_run(tokens=5 * 8 * SEQ, snapshot_every=2), data["train"], data["val"], data["gt"], out
    )
    names = sorted(p.name for p in (out / "snapshots").iterdir())
    assert names == ["step_000002.pt", "step_000004.pt"]
    snap = torch.load(out / "snapshots" / "step_000004.pt", weights_only=True)
    assert snap.keys() == _weights(out).keys()
    assert not _same_weights(snap, _weights(out))  # one more step trained since


def test_kill_9_then_rerun_resumes_and_matches(data, tmp_path):
    """The CLI killed with SIGKILL mid-run, then started again: it resumes from its checkpoint
    (not from zero) and its outputs are complete and equal to an uninterrupted run's."""
    run = make_run(
        tokens=240 * 8 * SEQ, checkpoint_every=10, eval_every=40, checkpoint_format="torch"
    )
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "nanigpt.train", "--run-config", json.dumps(run)]
    cmd += ["--train", str(data["train"]), "--val", str(data["val"])]
    cmd += ["--ground-truth", str(data["gt"]), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 60
        while not (out / "checkpoint.pt").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the run never wrote a checkpoint"
            time.sleep(0.02)
        time.sleep(0.2)  # somewhere after the first checkpoint
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()
    step = policy.load(out / "checkpoint.pt")["step"]
    assert 0 < step < 240

    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed_at = int(again.stderr.split("at step ")[1].split("/")[0])
    assert resumed_at >= step and resumed_at % 10 == 0  # from a checkpoint, not from zero
    assert f"resuming from {out / 'checkpoint.pt'}" in again.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "metrics.parquet", "model.pt", "summary.json", "trace.json.gz",
    ]  # fmt: skip
    straight = tmp_path / "straight"
    train(run, data["train"], data["val"], data["gt"], straight)
    assert _rows(out) == _rows(straight)
    assert _same_weights(_weights(out), _weights(straight))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] == resumed_at and summary["steps"] == 240
