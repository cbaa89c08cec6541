"""A run's data: its training batches, its fixed validation batches, and its dataset's floor.

Serves project question 1's "how close does each run get to its data's loss floor": validation
reports nats/token, bits/byte (through the validation shard's tokens per byte) and the gap to the
floor of `ground_truth.json` (null for real text, whose floor is unknown). The validation batches
are the same for every training seed (`VAL_SEED`): seeds vary the initial weights and the data
order, not the measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanigpt.data.loader import BatchLoader
from nanigpt.data.shards import read_shard
from nanigpt.io import read_json
from nanigpt.training.checkpoint.state import restore_loader, set_rng_state
from nanigpt.training.config import TrainingConfig

VAL_SEED = 0  # the validation batches' seed, whatever training.seed is


def run_inputs(train: str | Path, val: str | Path, ground_truth: str | Path) -> dict[str, Path]:
    """The run's input paths, the shards checked to exist."""
    paths = {"train": Path(train), "val": Path(val), "ground_truth": Path(ground_truth)}
    for flag, path in (("--train", paths["train"]), ("--val", paths["val"])):
        if not path.is_file():
            raise FileNotFoundError(f"{flag} shard not found: {path}")
    return paths


def read_floor(path: Path) -> float | None:
    """The dataset's entropy floor in bits/byte; None (real text) when it is not known."""
    ground_truth = read_json(path, what="ground truth file")
    if "floor_bits_per_byte" not in ground_truth:
        raise ValueError(f"ground truth file {path} has no 'floor_bits_per_byte'")
    floor = ground_truth.get("floor_bits_per_byte")
    return None if floor is None else float(floor)


@dataclass
class RunData:
    train_loader: BatchLoader
    val_batches: list
    val_tokens_per_byte: float

    def bits_per_byte(self, nats_per_token: float) -> float:
        return nats_per_token * self.val_tokens_per_byte / math.log(2)


def open_data(paths: dict[str, Path], t: TrainingConfig, state: dict[str, Any] | None) -> RunData:
    """The loaders of a run; a resumed run's training loader and RNG state are restored."""
    train_loader = BatchLoader(paths["train"], t.seq_len, t.batch_size, t.seed, impl=t.loader_impl)
    if state is not None:
        restore_loader(train_loader, state["loader"])
        set_rng_state(state["rng"])
    val_shard = read_shard(paths["val"])
    if val_shard.byte_count <= 0:
        raise ValueError(f"--val shard {paths['val']} encodes 0 bytes: bits/byte is undefined")
    val_loader = BatchLoader(val_shard, t.seq_len, t.batch_size, VAL_SEED)
    return RunData(
        train_loader,
        list(val_loader.eval_batches(t.eval_batches)),
        len(val_shard.tokens) / val_shard.byte_count,
    )
