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
`checkpoint.safetensors` from a Rust thread instead (`nanigpt.checkpoint_rust`); `load` reads
either by suffix, and `latest` finds the newest of the two in a run folder, so a run resumes from
whichever format it last wrote (the format is left out of the fingerprint).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nanigpt.io import atomic_path

MAGIC = b"NANIGPT-CHECKPOINT v1\n"
FORMAT = 1
FILES = {"torch": "checkpoint.pt", "rust": "checkpoint.safetensors"}  # training.checkpoint_format


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted (foreign, truncated, corrupt); the message names the file."""


def run_fingerprint(run: dict[str, Any], inputs: dict[str, str | Path]) -> str:
    """sha256 of the run's settings and of its inputs' identity (path, size, mtime).

    A checkpoint resumes only a run with the same fingerprint: changed settings (Snakemake reruns
    the run) or rebuilt inputs (a new shard, a new ground truth) start the run afresh.
    """
    settings = {k: v for k, v in run.items() if k != "sweeps"}
    if "checkpoint_format" in settings.get("training", {}):  # how it is stored, not what it holds
        training = {k: v for k, v in settings["training"].items() if k != "checkpoint_format"}
        settings = {**settings, "training": training}
    files = {}
    for name, path in sorted(inputs.items()):
        stat = Path(path).stat()
        files[name] = [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]
    text = json.dumps({"run": settings, "inputs": files}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


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


def latest(out_dir: str | os.PathLike) -> Path | None:
    """The most recently written checkpoint of a run folder, of either format; None if none."""
    found = [p for p in (Path(out_dir) / name for name in FILES.values()) if p.exists()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read and verify a checkpoint (magic, length, sha256), then unpickle it onto the CPU.

    A `.safetensors` path is read by `nanigpt.checkpoint_rust.load` (xxh3-128 verified in Rust)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from nanigpt import checkpoint_rust

        return checkpoint_rust.load(path)
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


# --- random generators -------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every generator a run may draw from, in types that `torch.load(weights_only=True)` reads."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


# --- the batch loader's position ---------------------------------------------------------------


def loader_state(loader: Any, batches_drawn: int) -> dict[str, Any]:
    """The sampler position: the splitmix64 state (Python loader) and the number of batches drawn."""
    rng = getattr(loader, "_rng", None)
    return {
        "impl": loader.impl,
        "seed": loader.seed,
        "batches_drawn": batches_drawn,
        "rng_state": rng.state if loader.impl == "python" and rng is not None else None,
    }


def restore_loader(loader: Any, state: dict[str, Any]) -> None:
    """Put a freshly built loader (same shard, seed and shape) where the checkpoint left it.

    The Python loader takes the generator state directly; the Rust loader keeps its state inside
    the extension, so its position is replayed by drawing `batches_drawn` batches (same sequence:
    both impls share the generator).
    """
    if state["seed"] != loader.seed:
        raise CheckpointError(f"loader seed {loader.seed} != checkpoint's {state['seed']}")
    if loader.impl == "python" and state["rng_state"] is not None:
        loader._rng.state = int(state["rng_state"])
        return
    for _ in range(state["batches_drawn"]):
        loader.next_batch()
