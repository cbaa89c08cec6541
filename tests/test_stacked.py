"""Stacked replicas (nanigpt.training.stacked, replica_optim, stacked_step): each replica trains as
the run alone does, through the trainer's own step (`nanigpt.training.step.train_step` with the
trainer's optimizer groups and clipping).

Tolerance: float32 on the CPU, rtol 1e-5 on the per-step losses and 2e-5 relative to the largest
entry on the final weights (atol = 2e-5 * max|w|; measured: at most 5e-6): batched matmuls add in another order than the
run alone's, and a few steps of Adam carry those last-bit differences into the weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nanigpt.data.loader import BatchLoader, SplitMix64
from nanigpt.data.shards import Shard
from nanigpt.measure.timers import StepTimer
from nanigpt.model.config import GPTConfig, MoEConfig
from nanigpt.model.gpt import GPT
from nanigpt.train import ADAMW_BETAS, _parallelize
from nanigpt.training.replica_optim import ReplicaAdamW, clip_per_replica_, lr_table
from nanigpt.training.schedule import lr_at
from nanigpt.training.stacked import StackedGPT, vmap_losses
from nanigpt.training.stacked_step import (
    DeviceBatches,
    Replica,
    StackedStep,
    splitmix64_draws,
)
from nanigpt.training.step import PHASES, train_step

VOCAB, SEQ, BATCH, STEPS = 64, 16, 4, 6


def _cfg(moe: MoEConfig | None = None, tied: bool = False) -> GPTConfig:
    return GPTConfig(VOCAB, SEQ, n_layer=2, d_model=32, n_head=2, moe=moe, tied_embeddings=tied)


def _shard(tmp_path) -> Shard:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, 4000).astype(np.uint16)
    return Shard(tmp_path / "train.bin", tokens, np.zeros(4000, np.uint8), 4000, VOCAB)


REPLICAS = [
    Replica(0, dict(lr=3e-3, min_lr_frac=0.1, warmup_steps=2, schedule="cosine"), 0.1, 1.0),
    Replica(1, dict(lr=1e-2, min_lr_frac=0.0, warmup_steps=1, schedule="wsd"), 0.0, 0.05),
    Replica(7, dict(lr=5e-4, min_lr_frac=0.1, warmup_steps=0, schedule="constant"), 0.3, None),
]


def _alone(cfg: GPTConfig, shard: Shard, r: Replica, grad_accum: int):
    """The run alone, through the trainer's own pieces; (per-step loss sums, final params)."""
    torch.manual_seed(r.seed)
    model = GPT(cfg)
    for block in model.blocks:
        if block.is_moe:
            block.mlp.impl = "loop"
    from nanigpt.parallel.setting import ParallelSetting

    par, _ = _parallelize(model, ParallelSetting(), torch.device("cpu"), 1)
    opt = par.make_optimizer(lr=r.schedule["lr"], weight_decay=r.weight_decay, betas=ADAMW_BETAS)
    loader = BatchLoader(shard, SEQ, BATCH, r.seed)
    timer = StepTimer("cpu", PHASES)
    losses = []
    for step in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, STEPS, **r.schedule)
        loss, *_ = train_step(
            par, model, opt, loader, timer, torch.device("cpu"), grad_accum, r.grad_clip
        )
        losses.append(float(loss))
    return losses, dict(model.named_parameters())


def _stacked(cfg: GPTConfig, shard: Shard, replicas, grad_accum: int):
    models = []
    for r in replicas:
        torch.manual_seed(r.seed)
        models.append(GPT(cfg))
    stacked = StackedGPT.from_models(models)
    stacked.moe_impl = "loop"
    data = DeviceBatches(
        shard.tokens, SEQ, BATCH, [r.seed for r in replicas], STEPS, grad_accum, "cpu"
    )
    runner = StackedStep(stacked, replicas, data, STEPS, grad_accum)
    for _ in range(STEPS):
        runner.step()
    return runner, stacked


@pytest.mark.parametrize(
    "moe, tied, grad_accum",
    [
        (None, False, 1),
        (None, True, 2),
        (MoEConfig(num_experts=4, top_k=1, capacity_factor=1.0), False, 1),
        (MoEConfig(num_experts=4, top_k=2, gate="sigmoid", shared_expert=True), True, 1),
    ],
    ids=["dense", "dense-tied-accum", "moe-top1-capacity", "moe-sigmoid-top2-shared"],
)
def test_each_replica_trains_as_the_run_alone(tmp_path, moe, tied, grad_accum):
    torch.set_num_threads(1)
    cfg, shard = _cfg(moe, tied), _shard(tmp_path)
    runner, stacked = _stacked(cfg, shard, REPLICAS, grad_accum)
    losses = runner.read_metrics(STEPS)["loss"]
    for k, r in enumerate(REPLICAS):
        alone_losses, alone_params = _alone(cfg, shard, r, grad_accum)
        np.testing.assert_allclose(losses[:, k], alone_losses, rtol=1e-5)
        for name, p in alone_params.items():
            got = stacked.param(name)[k].detach()
            atol = 2e-5 * float(p.detach().abs().max())
            torch.testing.assert_close(got, p.detach(), rtol=0, atol=atol, msg=name)
        if moe is not None and moe.gate == "sigmoid":
            model = stacked.load_replica(GPT(cfg), k)
            assert model.blocks[1].mlp.expert_bias.abs().sum() > 0  # the biases moved


def test_replica_adamw_equals_torch_adamw_per_replica():
    torch.manual_seed(0)
    K = 3
    shapes = [(K, 5, 4), (K, 4), (K, 2, 3, 2)]
    params = [torch.randn(s, requires_grad=True) for s in shapes]
    decay = [len(s) >= 3 for s in shapes]
    lrs, wds = [1e-3, 3e-2, 1e-1], [0.1, 0.0, 0.5]
    alone = []
    for k in range(K):
        ps = [p.detach()[k].clone().requires_grad_() for p in params]
        groups = [
            {"params": [p for p, d in zip(ps, decay, strict=True) if d], "weight_decay": wds[k]},
            {"params": [p for p, d in zip(ps, decay, strict=True) if not d], "weight_decay": 0.0},
        ]
        alone.append((ps, torch.optim.AdamW(groups, lr=lrs[k], betas=(0.9, 0.95))))
    opt = ReplicaAdamW(params, decay)
    lr, wd = torch.tensor(lrs), torch.tensor(wds)
    for _ in range(5):
        grads = [torch.randn(s) for s in shapes]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step(lr, wd)
        for k, (ps, torch_opt) in enumerate(alone):
            for p, g in zip(ps, grads, strict=True):
                p.grad = g[k].clone()
            torch_opt.step()
    for k, (ps, _) in enumerate(alone):
        for p, stacked in zip(ps, params, strict=True):
            torch.testing.assert_close(stacked.detach()[k], p.detach(), rtol=1e-5, atol=1e-7)


def test_clip_per_replica_equals_clip_grad_norm():
    torch.manual_seed(0)
    grads = [torch.randn(3, 4, 5), torch.randn(3, 7)]
    clipped = [g.clone() for g in grads]
    norms = clip_per_replica_(clipped, torch.tensor([1.0, 100.0, 2.0], dtype=torch.float64))
    for k, max_norm in enumerate([1.0, 100.0, 2.0]):
        ref = [g[k].clone().requires_grad_() for g in grads]
        for t in ref:
            t.grad = t.detach().clone()
        norm = torch.nn.utils.clip_grad_norm_(ref, max_norm)
        torch.testing.assert_close(norms[k], norm, rtol=1e-6, atol=0)
        for t, c in zip(ref, clipped, strict=True):
            torch.testing.assert_close(c[k], t.grad, rtol=1e-6, atol=1e-7)


def test_lr_table_is_lr_at():
    steps = 10
    table = lr_table([r.schedule for r in REPLICAS], steps)
    for k, r in enumerate(REPLICAS):
        want = [lr_at(s, steps, **r.schedule) for s in range(steps)]
        np.testing.assert_allclose(table[k].numpy(), want, rtol=1e-7)


def test_device_batches_are_the_loaders_batches(tmp_path):
    shard = _shard(tmp_path)
    rng = SplitMix64(5)
    assert [int(v) for v in splitmix64_draws(5, 4)] == [rng.next() for _ in range(4)]
    seeds = [3, 11]
    data = DeviceBatches(shard.tokens, SEQ, BATCH, seeds, steps=3, grad_accum=2, device="cpu")
    loaders = [BatchLoader(shard, SEQ, BATCH, s) for s in seeds]
    for step in range(3):
        for micro in range(2):
            x, y = data.batch(torch.tensor(step), micro)
            for k, loader in enumerate(loaders):
                want_x, want_y = loader.next_batch()
                assert torch.equal(x[k], want_x) and torch.equal(y[k], want_y)


def test_vmap_candidate_equals_stacked_forward():
    torch.set_num_threads(1)
    cfg = _cfg()
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(GPT(cfg))
    stacked = StackedGPT.from_models(models)
    x = torch.randint(0, VOCAB, (3, 2, SEQ))
    y = torch.randint(0, VOCAB, (3, 2, SEQ))
    params = {name: p for name, p in stacked.stacked_parameters()}
    torch.testing.assert_close(vmap_losses(models[0], params, x, y), stacked(x, y).loss)
    for k, m in enumerate(models):
        torch.testing.assert_close(stacked(x, y).loss[k], m(x[k], y[k]).loss, rtol=1e-5, atol=0)


def test_stacked_eval_equals_each_model():
    cfg = _cfg(MoEConfig(num_experts=4, top_k=1), tied=True)
    models = []
    for seed in range(2):
        torch.manual_seed(seed)
        models.append(GPT(cfg))
    stacked = StackedGPT.from_models(models)
    stacked.moe_impl = "loop"
    batches = [(torch.randint(0, VOCAB, (2, SEQ)), torch.randint(0, VOCAB, (2, SEQ)))]
    data = DeviceBatches(np.arange(100) % VOCAB, SEQ, 2, [0, 1], 1, 1, "cpu")
    runner = StackedStep(stacked, REPLICAS[:2], data, 1)
    val = runner.evaluate(batches)
    for k, m in enumerate(models):
        m.eval()
        with torch.no_grad():
            want = m(*batches[0]).loss
        torch.testing.assert_close(val[k].float(), want, rtol=1e-5, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_captured_step_equals_eager_step():
    cfg = GPTConfig(512, 64, n_layer=2, d_model=64, n_head=2, tied_embeddings=True)
    tokens = np.random.default_rng(0).integers(0, 512, 100_000)
    runs = []
    for captured in (False, True):
        models = []
        for r in REPLICAS:
            torch.manual_seed(r.seed)
            models.append(GPT(cfg).cuda())
        stacked = StackedGPT.from_models(models)
        data = DeviceBatches(tokens, 64, 8, [r.seed for r in REPLICAS], 8, 1, "cuda")
        runner = StackedStep(stacked, REPLICAS, data, 8)
        if captured:
            runner.capture()
        for _ in range(8):
            runner.replay()
        runs.append((runner.read_metrics(8)["loss"], [p.detach() for p in stacked.parameters()]))
    (eager_loss, eager_params), (graph_loss, graph_params) = runs
    np.testing.assert_allclose(graph_loss, eager_loss, rtol=1e-5)
    for a, b in zip(graph_params, eager_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_train_stacked_writes_each_run_as_train_alone(tmp_path):
    """The job runner's entry (nanigpt.training.stacked_runs): two runs differing in seed and lr
    trained stacked end where `nanigpt.train.train` of each alone ends (final validation loss,
    weights), with the trainer's summary keys."""
    from nanigpt.train import train
    from nanigpt.training.stacked_runs import plan_stacks, train_stacked
    from tests.test_train import SUMMARY_KEYS, make_run, write_tiny_data

    data = write_tiny_data(tmp_path / "data")
    inputs = (data["train"], data["val"], data["gt"])
    runs = [make_run(seed=0), make_run(seed=1, lr=3e-3)]
    runs[1]["run_id"] = "tiny_dense_s1_t1k_single"
    other = make_run(batch_size=4)  # another batch: not stackable with the two
    assert plan_stacks([runs[0], other, runs[1]]) == [runs, [other]]
    outs = [tmp_path / "stacked" / r["run_id"] for r in runs]
    stacked = train_stacked(runs, *inputs, outs)
    for run, out, summary in zip(runs, outs, stacked, strict=True):
        alone = train(run, *inputs, tmp_path / "alone" / run["run_id"])
        assert set(summary) >= SUMMARY_KEYS
        assert summary["final_val_loss"] == pytest.approx(alone["final_val_loss"], rel=1e-5)
        want = torch.load(tmp_path / "alone" / run["run_id"] / "model.pt")
        got = torch.load(out / "model.pt")
        assert set(got) == set(want)
        for name, w in want.items():
            torch.testing.assert_close(got[name], w, rtol=0, atol=2e-5 * float(w.abs().max()))
        assert (out / "metrics.parquet").is_file() and (out / "config.json").is_file()


def test_a_diverged_replica_fails_its_stack_as_the_trainer_fails_a_run(tmp_path):
    """A replica whose loss becomes non-finite stops the stack with the trainer's error, naming
    the run; no summary (which would hold NaN) is written."""
    from nanigpt.training.metrics import NonFiniteLossError
    from nanigpt.training.stacked_runs import train_stacked
    from tests.test_train import make_run, write_tiny_data

    data = write_tiny_data(tmp_path / "data")
    runs = [make_run(seed=0), make_run(seed=1, lr=1e6)]
    runs[1]["run_id"] = "tiny_dense_diverged"
    runs[1]["training"]["grad_clip"] = None
    outs = [tmp_path / r["run_id"] for r in runs]
    with pytest.raises(NonFiniteLossError, match="tiny_dense_diverged"):
        train_stacked(runs, data["train"], data["val"], data["gt"], outs)
    assert not any((out / "summary.json").exists() for out in outs)
