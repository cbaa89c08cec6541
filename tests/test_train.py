"""Tests of nanigpt.train: the loop every run of the graph goes through (questions 1 and 2).

Tiny model (1 layer, d_model 32) on a tiny learnable shard, 1 thread: every run takes a second or so.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from nanigpt import train as train_module
from nanigpt.data.shards import write_shard
from nanigpt.train import main, train
from nanigpt.training.config import RunConfigError, validate_run
from nanigpt.training.metrics import NonFiniteLossError
from nanigpt.training.schedule import lr_at

VOCAB = 32
SEQ = 16
FLOOR_BPB = 0.25
SUMMARY_KEYS = {
    "run_id", "dataset", "arch", "arch_kind", "size", "parallelism_name", "tokens_target",
    "tokens_trained", "steps", "params_total", "params_active", "params_embedding",
    "params_non_embedding_total", "params_non_embedding_active", "flops_per_token", "flops_total",
    "flops_6nd", "final_val_loss", "final_val_bpb", "floor_bpb", "gap_bpb", "wall_s",
    "tokens_per_s", "mfu", "device", "provenance",
}  # fmt: skip
METRIC_COLUMNS = {
    "step", "tokens", "flops", "loss", "aux_loss", "lr", "grad_norm", "step_time_s", "data_s",
    "forward_s", "backward_s", "comm_s", "optimizer_s", "other_s", "tokens_per_s", "mfu",
    "peak_memory_bytes", "profiled", "val_loss", "val_bpb", "val_gap_bpb", "comm_collectives",
    "comm_bytes", "comm_wire_bytes", "comm_measured_s", "comm_blocked_s", "comm_predicted_s",
    "moe_dropped_frac", "moe_router_entropy", "moe_load_cv",
}  # fmt: skip


def _tokens(n: int, seed: int) -> np.ndarray:
    """A learnable stream: a fixed cycle through the vocabulary, with 5% of tokens random."""
    rng = np.random.default_rng(seed)
    cycle = (np.arange(n) * 5) % VOCAB
    noise = rng.random(n) < 0.05
    return np.where(noise, rng.integers(0, VOCAB, n), cycle).astype(np.uint16)


def write_tiny_data(root: Path) -> dict[str, Path]:
    """Train and val shards of the learnable stream, and a ground truth with its floor."""
    paths = {"train": root / "train.bin", "val": root / "val.bin", "gt": root / "ground_truth.json"}
    for split, n, seed in (("train", 8192, 0), ("val", 2048, 1)):
        tokens = _tokens(n, seed)
        write_shard(paths[split], tokens, np.zeros(n, np.int32), byte_count=2 * n, vocab_size=VOCAB)
    paths["gt"].write_text(json.dumps({"dataset": "tiny", "floor_bits_per_byte": FLOOR_BPB}))
    return paths


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return write_tiny_data(tmp_path_factory.mktemp("data"))


def make_run(tokens: int = 1280, profile: bool = False, **training) -> dict:
    return {
        "run_id": "tiny_dense_s0_t1k_single",
        "dataset": "tiny",
        "arch": "dense",
        "arch_kind": "dense",
        "size": "s0",
        "tokens": tokens,
        "parallelism_name": "single",
        "parallelism": {"dp": 1, "fsdp": 1, "tp": 1, "ep": 1},
        "model": {
            "vocab_size": VOCAB,
            "seq_len": SEQ,
            "n_layer": 1,
            "d_model": 32,
            "n_head": 2,
            "mlp_ratio": 2.0,
            "tied_embeddings": False,
            "moe": None,
        },
        "training": {
            "seq_len": SEQ,
            "batch_size": 8,
            "grad_accum": 1,
            "lr": 1e-2,
            "min_lr_frac": 0.1,
            "warmup_frac": 0.1,
            "schedule": "cosine",
            "weight_decay": 0.1,
            "grad_clip": 1.0,
            "eval_every": 5,
            "eval_batches": 2,
            "seed": 0,
            "device": "cpu",
            "compile": False,
            "threads": 1,
            **training,
        },
        "profile": {"enabled": profile, "wait": 1, "warmup": 1, "active": 1},
    }


class DyingTrainStep:
    """Stands in for `nanigpt.train.train_step` (patched by `monkeypatch`): counts the steps in
    `calls` and raises KeyboardInterrupt, as a kill would, once more than `kill_at` have run."""

    def __init__(self, monkeypatch, kill_at: int):
        self.real, self.calls, self.kill_at = train_module.train_step, 0, kill_at
        monkeypatch.setattr(train_module, "train_step", self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls > self.kill_at:
            raise KeyboardInterrupt("killed")
        return self.real(*args, **kwargs)


def run_train(data, out: Path, run: dict) -> tuple[dict, list[dict]]:
    summary = train(run, data["train"], data["val"], data["gt"], out)
    return summary, pq.read_table(out / "metrics.parquet").to_pylist()


def test_same_seed_same_metrics_and_step_count(data, tmp_path):
    run = make_run(tokens=1000, grad_accum=2, batch_size=4)  # 128 tokens/step -> ceil = 8 steps
    summary_a, rows_a = run_train(data, tmp_path / "a", run)
    _, rows_b = run_train(data, tmp_path / "b", run)
    assert summary_a["steps"] == 8 and summary_a["tokens_trained"] == 1024
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    assert [r["grad_norm"] for r in rows_a] == [r["grad_norm"] for r in rows_b]
    assert [r["val_loss"] for r in rows_a] == [r["val_loss"] for r in rows_b]
    _, rows_c = run_train(
        data, tmp_path / "c", make_run(tokens=1000, grad_accum=2, batch_size=4, seed=1)
    )
    assert [r["loss"] for r in rows_a] != [r["loss"] for r in rows_c]


def test_loss_decreases_and_metrics_are_complete(data, tmp_path):
    summary, rows = run_train(data, tmp_path, make_run(tokens=40 * 8 * SEQ))
    assert len(rows) == summary["steps"] == 40
    assert set(rows[0]) == METRIC_COLUMNS
    losses = [r["loss"] for r in rows]
    assert losses[0] == pytest.approx(math.log(VOCAB), rel=0.1)  # near-uniform at init
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    evals = [r for r in rows if r["val_loss"] is not None]
    assert [r["step"] for r in evals] == [4, 9, 14, 19, 24, 29, 34, 39]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    # bits/byte: nats/token * tokens/byte / ln 2, with 2 bytes per token in these shards
    assert evals[-1]["val_bpb"] == pytest.approx(evals[-1]["val_loss"] / 2 / math.log(2))
    assert summary["final_val_bpb"] == evals[-1]["val_bpb"]
    assert summary["gap_bpb"] == pytest.approx(summary["final_val_bpb"] - FLOOR_BPB)
    assert rows[-1]["flops"] == pytest.approx(summary["flops_total"])
    assert summary["mfu"] is None and rows[0]["mfu"] is None  # no CPU peak
    for r in rows:
        phases = sum(r[f"{phase}_s"] for phase in ("data", "forward", "backward", "comm"))
        phases += r["optimizer_s"] + r["other_s"]
        assert phases == pytest.approx(r["step_time_s"])
        assert r["comm_bytes"] is None and r["moe_load_cv"] is None  # one process, dense
    assert rows[0]["lr"] < rows[3]["lr"] and rows[-1]["lr"] == pytest.approx(1e-3)


def test_nan_loss_stops_the_run_naming_the_step(data, tmp_path, monkeypatch):
    real_build = train_module.build_model

    class NanAfter(torch.nn.Module):
        def __init__(self, model, bad_call):
            super().__init__()
            self.model, self.calls, self.bad_call = model, 0, bad_call

        def forward(self, idx, targets=None):
            out = self.model(idx, targets)
            self.calls += 1
            if self.training and self.calls > self.bad_call:
                return out._replace(loss=out.loss * float("nan"))
            return out

    def build(run):
        model, cfg = real_build(run)
        return NanAfter(model, bad_call=3), cfg

    monkeypatch.setattr(train_module, "build_model", build)
    with pytest.raises(NonFiniteLossError, match="at step 3 "):
        train(make_run(eval_every=None), data["train"], data["val"], data["gt"], tmp_path)
    assert (tmp_path / "config.json").exists()
    assert not (tmp_path / "summary.json").exists()
    assert len(pq.read_table(tmp_path / "metrics.parquet")) == 3  # the steps before the NaN


def test_absurd_lr_is_caught(data, tmp_path):
    run = make_run(tokens=20 * 8 * SEQ, lr=1e12, grad_clip=None, warmup_frac=0.0)
    with pytest.raises(NonFiniteLossError, match=r"at step \d+"):
        train(run, data["train"], data["val"], data["gt"], tmp_path)
    assert not (tmp_path / "summary.json").exists()


def test_cosine_schedule_shape():
    kw = {"lr": 1.0, "min_lr_frac": 0.1, "warmup_steps": 10, "schedule": "cosine"}
    lrs = [lr_at(s, 100, **kw) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10], strict=False))  # warmup rises
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))  # then decays
    assert lrs[-1] == pytest.approx(0.1)
    assert lr_at(54, 100, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_wsd_schedule_shape():
    kw = {"lr": 1.0, "min_lr_frac": 0.0, "warmup_steps": 10, "schedule": "wsd", "decay_frac": 0.2}
    lrs = [lr_at(s, 100, **kw) for s in range(100)]
    assert lrs[9] == 1.0 and all(lr == 1.0 for lr in lrs[10:80])  # stable
    decay = lrs[80:]
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False))
    assert np.allclose(np.diff(decay), -0.05)  # linear
    assert lrs[-1] == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["training"].pop("lr"), "missing key 'training.lr'"),
        (
            lambda r: r["training"].update(batch_size="8"),
            "'training.batch_size' must be an integer",
        ),
        (lambda r: r["training"].update(schedule="linear"), "'training.schedule' = 'linear'"),
        (lambda r: r.pop("run_id"), "missing key 'run_id'"),
        (lambda r: r["training"].update(seq_len=64), "<= model.seq_len"),
        (lambda r: r["profile"].update(active="2"), "'profile.active' must be an integer"),
    ],
)
def test_bad_run_config_names_the_key(edit, message):
    run = make_run()
    edit(run)
    with pytest.raises(RunConfigError, match=message.replace("(", r"\(")):
        validate_run(run)


def test_cli_reports_bad_config_and_missing_files(data, tmp_path, capsys):
    base = [
        "--val",
        str(data["val"]),
        "--ground-truth",
        str(data["gt"]),
        "--out",
        str(tmp_path / "o"),
    ]
    bad = make_run()
    bad["model"]["n_head"] = 3  # d_model 32 does not split into 3 heads
    assert main(["--run-config", json.dumps(bad), "--train", str(data["train"]), *base]) == 2
    assert "n_head" in capsys.readouterr().err
    good = json.dumps(make_run())
    assert main(["--run-config", good, "--train", str(tmp_path / "nope.bin"), *base]) == 2
    assert "nope.bin" in capsys.readouterr().err
    assert (
        main(
            [
                "--run-config",
                "@" + str(tmp_path / "nope.json"),
                "--train",
                str(data["train"]),
                *base,
            ]
        )
        == 2
    )
    assert "nope.json" in capsys.readouterr().err
    assert main(["--run-config", "{not json", "--train", str(data["train"]), *base]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "o" / "summary.json").exists()


def test_cli_end_to_end_writes_the_four_files(data, tmp_path):
    out = tmp_path / "run"
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps(make_run(tokens=6 * 8 * SEQ, profile=True, schedule="wsd")))
    argv = [
        "--run-config",
        f"@{config_file}",
        "--train",
        str(data["train"]),
        "--val",
        str(data["val"]),
    ]
    assert main([*argv, "--ground-truth", str(data["gt"]), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "metrics.parquet",
        "model.pt",
        "summary.json",
        "trace.json.gz",
    ]  # fmt: skip; no temporary files, and the checkpoint is gone once the run is complete
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= SUMMARY_KEYS
    assert set(summary["provenance"]) == {
        "config_hash",
        "code_version",
        "packages",
        "device",
        "kernels",
    }
    assert summary["tokens_trained"] == 6 * 8 * SEQ and summary["floor_bpb"] == FLOOR_BPB
    assert summary["params_total"] == sum(
        p.numel() for p in train_module.build_model(make_run())[0].parameters()
    )
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["run_id"] == summary["run_id"]
    assert config["provenance"]["config_hash"] == summary["provenance"]["config_hash"]
    trace = json.loads(gzip.decompress((out / "trace.json.gz").read_bytes()))
    assert trace["traceEvents"]
    rows = pq.read_table(out / "metrics.parquet").to_pylist()
    assert [r["profiled"] for r in rows] == [False, True, True, False, False, False]
    mtimes = [
        (out / name).stat().st_mtime_ns
        for name in ("config.json", "metrics.parquet", "model.pt", "summary.json")
    ]
    assert mtimes == sorted(mtimes)
    # model.pt: the full state_dict, loadable into a model rebuilt from config.json
    from nanigpt.model.config import GPTConfig
    from nanigpt.model.gpt import GPT

    rebuilt = GPT(GPTConfig.from_dict(config["run"]["model"]))
    rebuilt.load_state_dict(torch.load(out / "model.pt", weights_only=True))


def test_killed_run_leaves_no_summary(data, tmp_path):
    out = tmp_path / "run"
    run = json.dumps(make_run(tokens=100_000 * 8 * SEQ))
    cmd = [
        sys.executable,
        "-m",
        "nanigpt.train",
        "--run-config",
        run,
        "--train",
        str(data["train"]),
    ]
    cmd += ["--val", str(data["val"]), "--ground-truth", str(data["gt"]), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 60
        # metrics.parquet first appears at the first validation (step 4): training is under way
        while not (out / "metrics.parquet").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the run never reached its first validation"
            time.sleep(0.05)
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert (out / "config.json").exists()
    assert not (out / "summary.json").exists()
    rows = pq.read_table(out / "metrics.parquet").num_rows
    assert 0 < rows < 100_000  # killed mid-training; what is there is whole


def test_moe_run_trains_with_aux_loss(data, tmp_path):
    run = make_run(tokens=4 * 8 * SEQ)
    run.update(arch="moe", arch_kind="moe")
    run["model"]["moe"] = {"num_experts": 4, "top_k": 1, "aux_loss_weight": 0.01}
    summary, rows = run_train(data, tmp_path, run)
    assert all(r["aux_loss"] > 0 for r in rows)
    for r in rows:  # the router's health, mean over MoE layers: top-1 of 4 experts
        assert 0 <= r["moe_dropped_frac"] < 1
        assert 0 < r["moe_router_entropy"] <= math.log(4) + 1e-6
        assert r["moe_load_cv"] >= 0
    assert summary["params_active"] < summary["params_total"]
    assert math.isfinite(summary["final_val_loss"])


def test_metrics_read_one_step_late_are_the_same_values(data, tmp_path):
    """The loop reads a step's metrics one step late, syncing only for eval/snapshots/the end:
    where the syncs fall changes no value (eval at every 2nd step vs only the last)."""
    run = make_run(tokens=6 * 8 * SEQ, eval_every=None, grad_clip=0.05)  # clips every step
    _, rows_late = run_train(data, tmp_path / "late", run)
    synced = make_run(tokens=6 * 8 * SEQ, eval_every=2, grad_clip=0.05, snapshot_every=3)
    _, rows_synced = run_train(data, tmp_path / "synced", synced)
    assert [r["step"] for r in rows_late] == list(range(6))
    for key in ("loss", "grad_norm", "lr", "aux_loss"):
        assert [r[key] for r in rows_late] == [r[key] for r in rows_synced], key
    provenance = json.loads((tmp_path / "late" / "config.json").read_text())["provenance"]
    assert provenance["kernels"] == dict.fromkeys(provenance["kernels"], "torch")
    assert set(provenance["kernels"]) == {"rms_norm", "rope", "swiglu", "cross_entropy"}


@pytest.mark.parametrize("max_norm", [0.01, 1e6], ids=["clips", "no-clip"])
def test_grad_clipping_on_the_device_matches_the_host_formula(max_norm):
    """Clipping without a host sync scales the gradients exactly as the host formula does."""
    from nanigpt.parallel.apply import Parallelized
    from nanigpt.parallel.ledger import Ledger
    from nanigpt.parallel.setting import ParallelSetting

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Linear(5, 3))
    model(torch.randn(4, 7)).square().sum().backward()
    before = [p.grad.clone() for p in model.parameters()]
    norm = Parallelized(
        model, ParallelSetting(), None, Ledger(torch.device("cpu"))
    ).clip_grad_norm_(max_norm)
    expected_norm = torch.stack([g.double().square().sum() for g in before]).sum().sqrt().float()
    assert float(norm) == float(expected_norm)
    coef = max_norm / (float(norm) + 1e-6)
    for g, p in zip(before, model.parameters(), strict=True):
        want = g * coef if coef < 1 else g
        assert torch.equal(p.grad, want)


@pytest.mark.slow
def test_kernels_triton_run_matches_torch_run(data, tmp_path):
    """A run with model.kernels: triton (the interpreter on the CPU) trains like the torch run
    (same losses within float32 reordering) and records the kernels it used."""
    rows = {}
    for impl in ("torch", "triton"):
        run = make_run(tokens=2 * 2 * SEQ, eval_every=None, batch_size=2, eval_batches=1)
        run["model"] = {**run["model"], "kernels": impl}
        _, rows[impl] = run_train(data, tmp_path / impl, run)
        provenance = json.loads((tmp_path / impl / "config.json").read_text())["provenance"]
        assert set(provenance["kernels"].values()) == {impl}
    for key in ("loss", "grad_norm"):
        got, want = [r[key] for r in rows["triton"]], [r[key] for r in rows["torch"]]
        assert got == pytest.approx(want, rel=1e-4), key
