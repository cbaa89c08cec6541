"""The Rust checkpoint writer (`nanigpt.training.checkpoint.rust_format`) against the torch.save reference.

Every dtype the trainer saves round-trips bit-exactly and equals what the reference reader returns
for the same payload; other tools (safetensors) read the file; damage is refused naming the file; a
writer killed mid-write leaves the previous checkpoint; resuming from a Rust checkpoint is
bit-for-bit, also across formats.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from nanigpt.train import train
from nanigpt.training.checkpoint import policy, torch_format
from nanigpt.training.checkpoint import rust_format as checkpoint_rust
from nanigpt.training.checkpoint import state as run_state
from nanigpt.training.checkpoint.torch_format import CheckpointError
from tests.test_checkpoint import Killed, _rows, _same_weights, _weights
from tests.test_train import SEQ, make_run, write_tiny_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return write_tiny_data(tmp_path_factory.mktemp("data"))


def _payload() -> dict:
    """What the trainer saves, in every dtype it can hold (bf16/fp16 models, int/bool buffers)."""
    g = torch.Generator().manual_seed(0)
    weights = torch.randn(33, 7, generator=g)
    weights[0, :4] = torch.tensor([float("nan"), float("inf"), -0.0, 1e-40])  # odd bit patterns
    model = {
        "wte.weight": weights,
        "bf16": torch.randn(5, 3, generator=g).bfloat16(),
        "fp16": torch.randn(4, generator=g).half(),
        "f64": torch.randn(3, generator=g).double(),
        "i64": torch.randint(-(2**62), 2**62, (6,), generator=g),
        "i32": torch.randint(-(2**30), 2**30, (2, 2), dtype=torch.int32, generator=g),
        "u8": torch.randint(0, 255, (9,), dtype=torch.uint8, generator=g),
        "mask": torch.rand(11, generator=g) > 0.5,
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 4),
        "strided": torch.arange(12.0).reshape(3, 4).t(),  # not contiguous
    }
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.randn(4, 3, generator=g))], lr=0.1)
    optimizer.param_groups[0]["params"][0].grad = torch.ones(4, 3)
    optimizer.step()
    return {
        "fingerprint": "ab" * 32,
        "step": 7,
        "model": model,
        "optimizer": optimizer.state_dict(),  # int keys, step tensors, param groups
        "rng": run_state.rng_state(),  # uint8 torch state, numpy int64 keys, python tuple
        "metrics": [{"loss": 1.5, "val_loss": None, "ok": True}],
        "wall_s": 0.1 + 0.2,
        "trace": torch.frombuffer(bytearray(b"\x1f\x8b trace"), dtype=torch.uint8),
        "blob": b"\x00\xff",
        "pair": (1, "x"),
    }


def _equal(a, b) -> bool:
    """Bit-exact equality of nested payloads (tensors by dtype, shape and bytes)."""
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.contiguous().view(-1).view(torch.uint8).tolist()
            == b.contiguous().view(-1).view(torch.uint8).tolist()
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    return type(a) is type(b) and (a == b or a != a and b != b)


@pytest.mark.parametrize("mmap", [False, True])
def test_every_dtype_round_trips_bit_exactly_and_equals_the_reference(tmp_path, mmap):
    payload = _payload()
    torch_format.save(tmp_path / "checkpoint.pt", payload)
    checkpoint_rust.save(tmp_path / "checkpoint.safetensors", payload)
    reference = policy.load(tmp_path / "checkpoint.pt")
    ours = checkpoint_rust.load(tmp_path / "checkpoint.safetensors", mmap=mmap)
    assert _equal(ours, reference)
    assert _equal(ours, {"format": torch_format.FORMAT, **payload})
    assert _equal(policy.load(tmp_path / "checkpoint.safetensors"), reference)  # dispatch
    run_state.set_rng_state(ours["rng"])  # the restored generator state is usable


def test_other_tools_read_the_file(tmp_path):
    safetensors = pytest.importorskip("safetensors")
    path = tmp_path / "checkpoint.safetensors"
    payload = _payload()
    checkpoint_rust.save(path, payload)
    with safetensors.safe_open(str(path), "pt") as f:
        assert f.metadata()["nanigpt_format"] == "1"
        for name, tensor in payload["model"].items():
            assert _equal(f.get_tensor(f"model/{name}"), tensor.contiguous())


def test_truncated_or_bit_flipped_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    checkpoint_rust.save(path, _payload())
    raw = path.read_bytes()
    cases = {
        "truncated": raw[:-10],
        "bit in the data": raw[:-50] + bytes([raw[-50] ^ 0x04]) + raw[-49:],
        "bit in the header": raw[:100] + bytes([raw[100] ^ 0x01]) + raw[101:],
        "empty": b"",
        "foreign": b"NANIGPT-CHECKPOINT v1\n" + raw,
    }
    for what, damaged in cases.items():
        path.write_bytes(damaged)
        for mmap in (False, True):
            with pytest.raises(CheckpointError, match="delete it") as e:
                checkpoint_rust.load(path, mmap=mmap)
            assert str(path) in str(e.value), what


FULL = textwrap.dedent(
    """
    import resource, signal, sys, torch
    from nanigpt.training.checkpoint import rust_format as checkpoint_rust
    from nanigpt.training.checkpoint.torch_format import CheckpointError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write() fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
    writer = checkpoint_rust.Writer()
    writer.save(sys.argv[1], {"step": 2, "model": {"w": torch.ones(1 << 20)}})
    try:
        writer.wait()
    except CheckpointError as e:
        print(e)
    """
)


def test_a_write_past_the_disk_limit_fails_in_one_line_and_keeps_the_old_file(tmp_path):
    """No room for the file (a 1 MB file-size limit stands for a full disk): wait() raises one
    line naming the file and what to do; the previous checkpoint and no temp file remain."""
    path = tmp_path / "checkpoint.safetensors"
    checkpoint_rust.save(path, {"step": 1, "model": {"w": torch.ones(4)}})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", FULL, str(path)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    message = out.stdout.strip()
    assert str(path) in message and "writing failed" in message and "free space" in message
    assert "\n" not in message
    assert checkpoint_rust.load(path)["step"] == 1
    assert not list(tmp_path.glob(".*.tmp"))
    writer = checkpoint_rust.Writer()  # a missing folder fails the same way
    writer.save(tmp_path / "no-such-dir" / "checkpoint.safetensors", {"w": torch.ones(4)})
    with pytest.raises(CheckpointError, match="no-such-dir.*writing failed"):
        writer.wait()


WRITER = textwrap.dedent(
    """
    import sys, torch
    from nanigpt.training.checkpoint import rust_format as checkpoint_rust
    big = {"step": 2, "model": {"w": torch.ones(64 << 20, dtype=torch.float32)}}
    writer = checkpoint_rust.Writer()
    while True:
        writer.save(sys.argv[1], big)
        writer.wait()
    """
)


def test_writer_killed_mid_write_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    previous = {"step": 1, "model": {"w": torch.arange(10.0)}}
    checkpoint_rust.save(path, previous)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size > 1 << 20 for p in tmp_path.glob(".*.tmp")):
            assert proc.poll() is None and time.monotonic() < deadline, "never started writing"
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    loaded = checkpoint_rust.load(path)  # either the previous file, or a whole newer one
    assert loaded["step"] in (1, 2)
    if loaded["step"] == 1:
        assert torch.equal(loaded["model"]["w"], previous["model"]["w"])
    assert list(tmp_path.glob(".*.tmp"))  # it really was killed during a write


def test_resume_from_a_rust_checkpoint_is_bit_for_bit(data, tmp_path, monkeypatch, caplog):
    run = make_run(tokens=12 * 8 * SEQ, profile=True, checkpoint_every=6, checkpoint_format="rust")
    straight = tmp_path / "straight"
    train(
        make_run(tokens=12 * 8 * SEQ, profile=True),
        data["train"],
        data["val"],
        data["gt"],
        straight,
    )

    resumed = tmp_path / "resumed"
    real_save = checkpoint_rust.Writer.save

    def save_then_die(self, path, payload):
        real_save(self, path, payload)
        self.wait()
        raise Killed

    monkeypatch.setattr(checkpoint_rust.Writer, "save", save_then_die)
    with pytest.raises(Killed):
        train(run, data["train"], data["val"], data["gt"], resumed)
    monkeypatch.setattr(checkpoint_rust.Writer, "save", real_save)
    assert policy.latest(resumed) == resumed / "checkpoint.safetensors"
    assert policy.load(resumed / "checkpoint.safetensors")["step"] == 6

    torch_run = make_run(tokens=12 * 8 * SEQ, profile=True, checkpoint_every=6)
    torch_run["training"]["checkpoint_format"] = "torch"  # switching format still resumes
    with caplog.at_level(logging.INFO, logger="nanigpt.train"):
        summary = train(torch_run, data["train"], data["val"], data["gt"], resumed)
    assert f"resuming from {resumed / 'checkpoint.safetensors'} at step 6/12" in caplog.text
    assert summary["resumed_from_step"] == 6
    assert _rows(resumed) == _rows(straight)
    assert _same_weights(_weights(resumed), _weights(straight))
    assert not list(resumed.glob("checkpoint.*"))  # complete: deleted


def test_bad_format_setting_is_refused(data, tmp_path):
    from nanigpt.training.config import RunConfigError, validate_run

    with pytest.raises(RunConfigError, match="checkpoint_format"):
        validate_run(make_run(checkpoint_format="pickle"))
