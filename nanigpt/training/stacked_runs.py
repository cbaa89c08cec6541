"""Train the runs of a job that differ only in seed or scalar hyperparameters as one stacked model,
and write each run's outputs as its own run would: the job runner's entry to stacked replicas.

Serves issue 28 (a sweep's lr probe and seeds cost about one run): `plan_stacks` groups a job's
runs by everything but their run id and the settings a replica may set apart (`REPLICA_KEYS`:
seed, lr, weight decay, warmup, min lr, clip); `train_stacked` trains one such group with
`nanigpt.training.stacked_step.StackedStep` (captured in a CUDA graph for dense models on a GPU)
and writes, per run, `config.json`, `metrics.parquet` (loss, aux loss, lr, gradient norm, MoE router
statistics and validation at the run's eval points; the step-time columns are null: the K runs share
every step), `trace.json.gz` (empty, saying why: no step of one run alone to profile), `model.pt`
(the GPT's state dict, as `nanigpt.train` writes it) and `summary.json` last, with the trainer's keys and a `stacked` record (replicas, index, captured). tests/test_stacked
holds each run's final validation loss equal to `nanigpt.train.train` of the run alone.

Not here (the trainer keeps them): checkpoints and resume (a killed stacked job's rerun stacks its
unfinished runs again from step 0: `nanigpt.training.jobs`), profiler traces, snapshots,
multi-process runs, Triton kernels.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nanigpt.model.config import GPTConfig
from nanigpt.parallel.setting import world_size

log = logging.getLogger("nanigpt.training.stacked_runs")

REPLICA_KEYS = ("seed", "lr", "weight_decay", "warmup_frac", "warmup_steps", "min_lr_frac",
                "grad_clip")  # fmt: skip


def stack_key(run: dict[str, Any]) -> str | None:
    """What runs must share to stack (None: the run cannot stack: several processes, or a model
    outside the reference layout, `GPTConfig.reference_layout_refusal`): the run without its id,
    its profile window, its top-level `seed` and `REPLICA_KEYS`."""
    if world_size(run.get("parallelism", {})) != 1:
        return None
    if GPTConfig.from_dict(run["model"]).reference_layout_refusal:
        return None
    # `seed` beside `training`: the graph's runs carry their seed there too (its id's seed)
    rest = copy.deepcopy({k: v for k, v in run.items() if k not in ("run_id", "profile", "seed")})
    for key in REPLICA_KEYS:
        rest.get("training", {}).pop(key, None)
    return json.dumps(rest, sort_keys=True)


def plan_stacks(runs: Sequence[dict[str, Any]], max_replicas: int = 16) -> list[list[dict]]:
    """The runs in groups that train stacked (at most `max_replicas` each), in first-seen order;
    a run that cannot stack is a group of one."""
    groups: dict[str, list[dict]] = {}
    for i, run in enumerate(runs):
        key = stack_key(run)
        groups.setdefault(key if key is not None else f"alone:{i}", []).append(run)
    return [
        g[i : i + max_replicas] for g in groups.values() for i in range(0, len(g), max_replicas)
    ]


def _device(setting: str):
    import torch

    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def train_stacked(
    runs: Sequence[dict[str, Any]],
    train_path: str | Path,
    val_path: str | Path,
    ground_truth_path: str | Path,
    out_dirs: Sequence[str | Path],
    capture: bool = True,
) -> list[dict[str, Any]]:
    """Train `runs` (one `plan_stacks` group) stacked; write each run's outputs into its out dir
    (module docstring); return their summaries."""
    import numpy as np
    import torch

    from nanigpt.data.loader import BatchLoader
    from nanigpt.data.shards import read_shard
    from nanigpt.io import atomic_path, ensure_dir, write_json_atomic
    from nanigpt.measure.provenance import collect_provenance, config_hash
    from nanigpt.measure.trace import write_empty_trace
    from nanigpt.model.flops import count
    from nanigpt.model.gpt import GPT
    from nanigpt.training.config import RunConfig
    from nanigpt.training.data import VAL_SEED, read_floor, run_inputs
    from nanigpt.training.metrics import NonFiniteLossError, write_metrics
    from nanigpt.training.stacked import StackedGPT
    from nanigpt.training.stacked_step import MOE_METRICS, Replica, StackedStep

    wall_start = time.perf_counter()
    cfgs = [RunConfig.from_dict(r) for r in runs]
    keys = {stack_key(c.as_dict()) for c in cfgs}
    if len(keys) != 1 or None in keys:
        raise ValueError("train_stacked: the runs differ in more than REPLICA_KEYS; plan_stacks")
    first = cfgs[0]
    t, steps = first.training, first.steps
    if len({c.steps for c in cfgs}) != 1:
        raise ValueError("train_stacked: the runs differ in their steps")
    paths = run_inputs(train_path, val_path, ground_truth_path)
    floor = read_floor(paths["ground_truth"])
    device = _device(t.device)
    if t.threads:
        torch.set_num_threads(t.threads)
    models = []
    for c in cfgs:
        torch.manual_seed(c.training.seed)  # the trainer's initial weights of each run
        models.append(GPT(c.model).to(device))
    stacked = StackedGPT.from_models(models)
    train_shard = read_shard(paths["train"])
    from nanigpt.training.stacked_step import DeviceBatches

    data = DeviceBatches(
        train_shard.tokens, t.seq_len, t.batch_size, [c.training.seed for c in cfgs], steps,
        t.grad_accum, device,
    )  # fmt: skip
    runner = StackedStep(stacked, [Replica.from_run(c) for c in cfgs], data, steps, t.grad_accum)
    captured = capture and runner.capturable
    if captured:
        runner.capture()
    val_shard = read_shard(paths["val"])
    val_batches = BatchLoader(val_shard, t.seq_len, t.batch_size, VAL_SEED).eval_batches(
        t.eval_batches
    )
    tokens_per_byte = len(val_shard.tokens) / val_shard.byte_count
    evals: dict[int, Any] = {}
    train_start = time.perf_counter()
    for step in range(steps):
        runner.replay()
        if step == steps - 1 or (first.eval_every and (step + 1) % first.eval_every == 0):
            evals[step] = runner.evaluate(val_batches).cpu().numpy()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_s = time.perf_counter() - train_start
    metrics = runner.read_metrics(steps)
    finite = np.isfinite(metrics["loss"])  # [steps, K]
    if not finite.all():
        bad = [(cfgs[k].run_id, int(np.argmin(finite[:, k]))) for k in np.where(~finite.all(0))[0]]
        raise NonFiniteLossError(  # as the trainer: a diverged run fails, it writes no summary
            "; ".join(f"{rid}: the loss became non-finite at step {s}" for rid, s in bad)
            + ": lower its lr, or train it alone"
        )
    accounting = count(first.model, seq_len=t.seq_len)
    flops_per_token = float(accounting.train_flops_per_token)
    tokens_per_step = first.tokens_per_step
    summaries = []
    shared = collect_provenance(first.as_dict(), device)  # code, packages, device: one for all K
    for k, (c, out) in enumerate(zip(cfgs, out_dirs, strict=True)):
        out = ensure_dir(Path(out))
        provenance = {**shared, "config_hash": config_hash(c.as_dict())}
        stacked_info = {"replicas": len(cfgs), "index": k, "captured": captured}
        write_json_atomic(
            out / "config.json",
            {"run": c.as_dict(), "provenance": provenance,
             "inputs": {name: str(p) for name, p in paths.items()},
             "derived": {"device": str(device), "steps": steps, "tokens_per_step": tokens_per_step,
                         "warmup_steps": c.warmup_steps, "flops_per_token": flops_per_token,
                         "stacked": stacked_info}},
        )  # fmt: skip
        rows = []
        for step in range(steps):
            row = {
                "step": step, "tokens": (step + 1) * tokens_per_step,
                "flops": flops_per_token * (step + 1) * tokens_per_step,
                "loss": float(metrics["loss"][step, k]) / t.grad_accum,
                "aux_loss": float(metrics["aux_loss"][step, k]) / t.grad_accum,
                "lr": float(metrics["lr"][step, k]),
                "grad_norm": float(metrics["grad_norm"][step, k]), "profiled": False,
            }  # fmt: skip
            for name in MOE_METRICS:
                if name in metrics:
                    row[name] = float(metrics[name][step, k])
            if step in evals:
                val_loss = float(evals[step][k])
                bpb = val_loss * tokens_per_byte / math.log(2)
                row.update(val_loss=val_loss, val_bpb=bpb,
                           val_gap_bpb=None if floor is None else bpb - floor)  # fmt: skip
            rows.append(row)
        write_metrics(out / "metrics.parquet", rows)
        write_empty_trace(
            out / "trace.json.gz",
            f"stacked replicas: {len(cfgs)} runs share every step; no step of this run alone",
        )
        weights = stacked.load_replica(models[k], k).state_dict()
        with atomic_path(out / "model.pt") as tmp:  # nanigpt.train's model.pt: the state dict
            torch.save({name: w.detach().cpu().clone() for name, w in weights.items()}, tmp)
        final, params = rows[-1], accounting.params
        tokens_trained = steps * tokens_per_step
        summary = {
            "run_id": c.run_id, "dataset": c.dataset, "arch": c.arch, "arch_kind": c.arch_kind,
            "size": c.size, "parallelism_name": c.parallelism_name, "seed": c.training.seed,
            "tokens_target": c.tokens, "tokens_trained": tokens_trained, "steps": steps,
            "params_total": params.total, "params_active": params.active,
            "params_embedding": params.embedding,
            "params_non_embedding_total": params.non_embedding_total,
            "params_non_embedding_active": params.non_embedding_active,
            "flops_per_token": flops_per_token,
            "flops_per_token_non_embedding": flops_per_token
            - accounting.train_by_component["lm_head"] - accounting.train_by_component["embedding"],
            "flops_total": flops_per_token * tokens_trained,
            "flops_6nd": 6.0 * params.non_embedding_active * tokens_trained,
            "final_val_loss": final["val_loss"], "final_val_bpb": final["val_bpb"],
            "floor_bpb": floor, "gap_bpb": final["val_gap_bpb"],
            "wall_s": time.perf_counter() - wall_start,
            "tokens_per_s": tokens_trained / train_s,  # this run's tokens over the shared steps
            "mfu": None, "device": provenance["device"], "world_size": 1, "strategy": "single",
            "resumed_from_step": None, "provenance": provenance, "stacked": stacked_info,
        }  # fmt: skip
        write_json_atomic(out / "summary.json", summary)
        summaries.append(summary)
        log.info(
            f"{c.run_id}: val {final['val_loss']:.4f} nats/token (stacked {k + 1}/{len(cfgs)})"
        )
    return summaries
