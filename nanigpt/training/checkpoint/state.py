"""What a checkpoint holds besides the weights: the run's fingerprint, the generators, the loader.

Serves the contract that a killed run resumes where it stopped, bit for bit on the CPU
(docs/interfaces.md, "A run"): a checkpoint resumes only the run whose settings and inputs it was
written for (`run_fingerprint`), and restores every random generator and the batch sampler's
position, whichever format stores it (`torch_format`, `rust_format`).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nanigpt.training.checkpoint.torch_format import CheckpointError
from nanigpt.training.config import run_settings


def run_fingerprint(run: dict[str, Any], inputs: dict[str, str | Path]) -> str:
    """sha256 of the run's settings and of its inputs' identity (path, size, mtime).

    A checkpoint resumes only a run with the same fingerprint: changed settings (Snakemake reruns
    the run) or rebuilt inputs (a new shard, a new ground truth) start the run afresh.
    """
    settings = run_settings(run)
    if "checkpoint_format" in settings.get("training", {}):  # how it is stored, not what it holds
        training = {k: v for k, v in settings["training"].items() if k != "checkpoint_format"}
        settings = {**settings, "training": training}
    files = {}
    for name, path in sorted(inputs.items()):
        stat = Path(path).stat()
        files[name] = [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]
    text = json.dumps({"run": settings, "inputs": files}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


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
