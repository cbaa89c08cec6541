"""workflow/config/h200.yaml (issue 15): it plans, and its smallest runs train on the CPU."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from nanigpt.data.shards import write_shard
from nanigpt.data.synthetic import SyntheticSpec, knowledge_bits
from nanigpt.graph.config import REPO_ROOT, load_config, resolve_runs
from nanigpt.model.flops import count
from nanigpt.train import train

H200 = REPO_ROOT / "workflow" / "config" / "h200.yaml"


def test_h200_sweep_is_designed_for_a_visible_crossover():
    config = load_config(H200)
    runs = resolve_runs(config)
    sweep = config["sweeps"]["scaling"]
    assert len(sweep["sizes"]) >= 4 and len(sweep["seeds"]) >= 2
    smallest = min(
        (r for r in runs.values() if "scaling" in r["sweeps"] and r["arch_kind"] == "dense"),
        key=lambda r: (count(r["model"]).params.non_embedding_active, -r["tokens"]),
    )
    params = count(smallest["model"]).params.non_embedding_active
    assert smallest["tokens"] / params >= 100  # 100+ tokens per active parameter at the smallest
    bits = knowledge_bits(SyntheticSpec.from_dict(config["datasets"]["mix"]))["bits"]
    assert bits / params > 10  # capacity-bound: far more table bits than the small model holds


def write_random_shards(root, vocab: int, n: int = 70_000) -> dict:
    rng = np.random.default_rng(0)
    paths = {"train": root / "train.bin", "val": root / "val.bin", "gt": root / "gt.json"}
    for split in ("train", "val"):
        tokens = rng.integers(0, vocab, n).astype(np.uint16)
        write_shard(paths[split], tokens, np.zeros(n, np.int32), byte_count=4 * n, vocab_size=vocab)
    paths["gt"].write_text(json.dumps({"dataset": "mix", "floor_bits_per_byte": 0.5}))
    return paths


@pytest.mark.parametrize("arch", ["dense", "moe"])
def test_h200_smallest_runs_train_on_the_cpu(tmp_path, arch):
    runs = resolve_runs(load_config(H200))
    run = copy.deepcopy(runs[f"mix_{arch}_t1_t2M_single"])
    # The configured model and sequence length; 4 sequences per step instead of 128 (a 32k-token
    # step's 4096-way logits take a minute on a shared CPU), two steps.
    run["training"].update(device="cpu", threads=1, eval_batches=1, snapshot_every=0, batch_size=4)
    run["tokens"] = 2 * 4 * run["training"]["seq_len"]
    run["profile"]["enabled"] = False
    data = write_random_shards(tmp_path, run["model"]["vocab_size"])
    summary = train(run, data["train"], data["val"], data["gt"], tmp_path / "out")
    assert summary["steps"] == 2 and summary["seed"] == 0
    assert np.isfinite(summary["final_val_bpb"])
