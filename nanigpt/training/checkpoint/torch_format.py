"""Resumable training: a run killed at any point resumes where it stopped and ends with the same result.

Serves the contract "a killed job leaves no half file behind and a rerun resumes from its last
checkpoint" (DESIGN.md), and with it project question 1: every run of the graph, however long,
finishes with its own numbers even when the job is killed and Snakemake reruns it.

Format of `checkpoint.pt` (one file, written atomically by `nanigpt.io`, temp file + rename):

    NANIGPT-CHECKPOINT v1\\n                           magic line (a foreign file fails here)
    sha256 <64 hex digits> bytes <payload length>\\n   checksum line
    <payload>                                          torch.save(dict), loaded with weights_only

The payload dict (`format` 1): `fingerprint` (sha256 of the run settings and the identity of its
input files: `run_fingerprint`), `run_id`, `step` (optimizer steps completed), `steps`, `tokens`,
`model` (the unwrapped model's state_dict), `optimizer` (its state_dict), `scheduler` (the
learning-rate schedule's position and settings: the schedule is a pure function of the step),
`rng` (torch, CUDA, numpy and python generator states), `loader` (the batch sampler's position),
`metrics` (the metrics rows so far), `wall_s` (seconds trained before this point), `trace` (the
profiler trace bytes when the window already closed, else None), `parallelism`.

`load` verifies the magic, the length and the checksum before unpickling anything and raises
`CheckpointError` naming the file on a foreign, truncated or corrupt checkpoint.

This is the reference. `training.checkpoint_format: rust` writes the same payload as
`checkpoint.safetensors` from a Rust thread instead (`rust_format`, which imports this module for
the format number and the error); `policy` picks the format, reads either by suffix and finds the
newest of the two in a run folder, so a run resumes from whichever format it last wrote (the
format is left out of the fingerprint, `state.run_fingerprint`).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from nanigpt.io import atomic_path

MAGIC = b"NANIGPT-CHECKPOINT v1\n"
FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted (foreign, truncated, corrupt); the message names the file."""


def save(path: str | os.PathLike, payload: dict[str, Any]) -> int:
    """Write `payload` as a checksummed checkpoint, atomically; returns the file size in bytes."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    data = buffer.getvalue()
    header = MAGIC + f"sha256 {hashlib.sha256(data).hexdigest()} bytes {len(data)}\n".encode()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return len(header) + len(data)


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read and verify a checkpoint (magic, length, sha256), then unpickle it onto the CPU."""
    path = Path(path)
    raw = path.read_bytes()
    if not raw.startswith(MAGIC):
        raise CheckpointError(
            f"checkpoint {path}: not a naniGPT checkpoint (expected the header {MAGIC!r}, got "
            f"{raw[: len(MAGIC)]!r}); delete it to start the run from step 0"
        )
    end = raw.find(b"\n", len(MAGIC))
    fields = raw[len(MAGIC) : end].decode("ascii", "replace").split() if end > 0 else []
    if len(fields) != 4 or fields[0] != "sha256" or fields[2] != "bytes" or not fields[3].isdigit():
        raise CheckpointError(
            f"checkpoint {path}: damaged checksum line {raw[len(MAGIC) : end]!r}; delete it to "
            f"start the run from step 0"
        )
    digest, length = fields[1], int(fields[3])
    data = raw[end + 1 :]
    if len(data) != length:
        raise CheckpointError(
            f"checkpoint {path}: truncated or padded: payload is {len(data)} bytes, the header "
            f"says {length}; delete it to start the run from step 0"
        )
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise CheckpointError(
            f"checkpoint {path}: corrupt: sha256 of the payload is {actual}, the header says "
            f"{digest}; delete it to start the run from step 0"
        )
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: unknown payload format; expected {FORMAT}")
    return payload
