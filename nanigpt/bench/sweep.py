"""How fast can one device train a sweep of small models? Step time, tokens/s per model and share
of the measured matmul ceiling, per size and mode, in one call.

Serves issue 28 (sweeps at the hardware's speed): the study's GPU sizes (131k-6.3M non-embedding
parameters) are launch-bound, so a run alone leaves the GPU nearly idle. Modes, each a training
step of the same model and batch:
- `eager`: the trainer's own step (`nanigpt.training.step.train_step`: host loader, bf16 autocast on
  the GPU, clip 1.0, AdamW fused on the GPU), one run alone: what `nanigpt.train` does today;
- `compiled`: the same with `torch.compile(model)` (Inductor, default mode);
- `nosync`: `nanigpt.training.stacked_step.StackedStep` with K = 1, eager: data on the device, lr
  from a device table, lagged metrics, no host sync;
- `graph`: the same step captured whole (forward, backward, clip, AdamW) in a CUDA graph, one
  replay per step (on the CPU, and for MoE models, the eager step: the row's `captured` says);
- `stacked`: K = 1, 4, 8, 16 replicas (`nanigpt.training.stacked.StackedGPT`), captured where
  `graph` is;
- `vmap` (CPU preset only): K = 8 replicas through `torch.func.vmap` over `functional_call`, the
  candidate `StackedGPT` was chosen over (`nanigpt.training.stacked`'s docstring).

Per row: `step_s` (median over timed windows of the mean step), `tokens_per_s` (all replicas),
`tokens_per_s_per_model` (= tokens_per_s / K), and `ceiling_share` = counted training FLOPs
(`nanigpt.model.flops`, 3x the forward's matmuls plus attention) x tokens/s / the matmul ceiling
measured in the same call (a large bf16 matmul on a GPU, float32 on the CPU; Williams et al. 2009's
roofline takes the measured, not the datasheet, peak). `speedup` is tokens_per_s / the size's
`eager` tokens_per_s.

    python -m nanigpt.bench.sweep --preset gpu --out docs/measurements/h200/sweep/sweep.json \
        --figure docs/measurements/h200/sweep/sweep.svg
    python -m nanigpt.bench.sweep --preset cpu --out results/bench/sweep_cpu.json
    python -m nanigpt.bench.sweep --from-json sweep.json --figure sweep.svg   # figure only
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("nanigpt.bench.sweep")

# (n_layer, d_model, n_head): the headline's CPU sizes (workflow/config/default.yaml) and the GPU
# study's (docs/measurements/h200/scaling_lr/config.yaml, workflow/config/h200.yaml).
SIZES = {
    "h4": (1, 24, 2),
    "h5": (2, 36, 2),
    "t1": (2, 64, 2),
    "t2": (3, 96, 3),
    "t3": (4, 128, 4),
    "t4": (4, 192, 4),
    "t5": (6, 256, 4),
}


@dataclass
class Preset:
    sizes: list[str]
    vocab_size: int
    seq_len: int
    batch_size: int
    modes: list[str]
    stack: list[int]
    compiled_sizes: list[str]  # torch.compile costs tens of seconds a shape: only these
    moe_sizes: list[str]  # the 8-expert top-1 MoE twin: eager and stacked (K = max stack)
    warmup: int
    steps: int  # timed steps per window
    windows: int
    device: str
    threads: int | None = None
    notes: list[str] = field(default_factory=list)


PRESETS = {
    "cpu": Preset(
        sizes=["h4", "h5"], vocab_size=512, seq_len=64, batch_size=8,
        modes=["eager", "nosync", "graph", "stacked", "vmap"], stack=[1, 4, 8],
        compiled_sizes=[], moe_sizes=["h5"], warmup=1, steps=2, windows=2, device="cpu",
        threads=1,
    ),
    "gpu": Preset(
        sizes=["t1", "t2", "t3", "t4", "t5"], vocab_size=4096, seq_len=256, batch_size=32,
        modes=["eager", "compiled", "nosync", "graph", "stacked"], stack=[1, 4, 8, 16],
        compiled_sizes=["t1", "t3"], moe_sizes=["t1", "t3"], warmup=5, steps=10, windows=3,
        device="cuda",
    ),
}  # fmt: skip


class SweepError(ValueError):
    """Bad input: an unknown preset, size or mode, or no device for the preset."""


def model_config(preset: Preset, size: str, moe: bool = False):
    from nanigpt.model.config import GPTConfig, MoEConfig

    n_layer, d_model, n_head = SIZES[size]
    return GPTConfig(
        vocab_size=preset.vocab_size, seq_len=preset.seq_len, n_layer=n_layer, d_model=d_model,
        n_head=n_head, mlp_ratio=4, tied_embeddings=True,
        moe=MoEConfig(num_experts=8, top_k=1) if moe else None,
    )  # fmt: skip


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling(device) -> dict[str, Any]:
    """FLOP/s of a large square matmul (bf16 on a GPU, float32 on the CPU), best of a few."""
    import torch

    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (512, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    reps = 20 if device.type == "cuda" else 3
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / reps)
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "flops": 2 * n**3 / best}


def _timed(step, device, warmup: int, steps: int, windows: int) -> float:
    """Median over windows of the mean step time; `step()` runs one training step."""
    for _ in range(warmup):
        step()
    _sync(device)
    means = []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        means.append((time.perf_counter() - t0) / steps)
    return statistics.median(means)


def _tokens(preset: Preset, n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, preset.vocab_size, n).astype(np.uint16)


def _eager_step(preset: Preset, cfg, device, compiled: bool):
    """The trainer's step of one run (nanigpt.training.step.train_step) as a callable."""
    import torch

    from nanigpt.data.loader import BatchLoader
    from nanigpt.data.shards import Shard
    from nanigpt.measure.timers import StepTimer
    from nanigpt.model.gpt import GPT
    from nanigpt.parallel.setting import ParallelSetting
    from nanigpt.train import ADAMW_BETAS, _parallelize
    from nanigpt.training.step import PHASES, train_step

    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    par, _ = _parallelize(model, ParallelSetting(), device, 1)
    fused = True if device.type == "cuda" else None
    opt = par.make_optimizer(lr=1e-3, weight_decay=0.1, betas=ADAMW_BETAS, fused=fused)
    n = 1 << 20
    tokens = _tokens(preset, n)
    shard = Shard(None, tokens, np.zeros(n, np.uint8), n, preset.vocab_size)
    loader = BatchLoader(shard, preset.seq_len, preset.batch_size, 0)
    timer = StepTimer(device, PHASES)
    step_model = torch.compile(model) if compiled else model

    def step():
        train_step(par, step_model, opt, loader, timer, device, 1, 1.0)

    return step


def _stacked_runner(preset: Preset, cfg, device, replicas: int, total_steps: int):
    import torch

    from nanigpt.model.gpt import GPT
    from nanigpt.training.stacked import StackedGPT
    from nanigpt.training.stacked_step import DeviceBatches, Replica, StackedStep

    models = []
    specs = []
    for k in range(replicas):
        torch.manual_seed(k)
        models.append(GPT(cfg).to(device))
        schedule = dict(lr=1e-3 * (1 + k), min_lr_frac=0.1, warmup_steps=2, schedule="cosine")
        specs.append(Replica(k, schedule, 0.1, 1.0))
    stacked = StackedGPT.from_models(models)
    del models
    data = DeviceBatches(
        _tokens(preset, 1 << 20), preset.seq_len, preset.batch_size, list(range(replicas)),
        total_steps, 1, device,
    )  # fmt: skip
    return StackedStep(stacked, specs, data, total_steps)


def _vmap_step(preset: Preset, cfg, device, replicas: int):
    """K replicas through torch.func.vmap over functional_call, ReplicaAdamW, per-replica clip."""
    import torch

    from nanigpt.model.gpt import GPT
    from nanigpt.training.replica_optim import ReplicaAdamW, clip_per_replica_
    from nanigpt.training.stacked import StackedGPT, vmap_losses

    models = []
    for k in range(replicas):
        torch.manual_seed(k)
        models.append(GPT(cfg).to(device))
    stacked = StackedGPT.from_models(models)
    params = dict(stacked.stacked_parameters())
    opt = ReplicaAdamW(list(params.values()), [p.dim() >= 3 for p in params.values()])
    lr = torch.full((replicas,), 1e-3, device=device)
    wd = torch.full((replicas,), 0.1, device=device)
    clip = torch.ones(replicas, dtype=torch.float64, device=device)
    shape = (replicas, preset.batch_size, preset.seq_len)
    x = torch.randint(0, preset.vocab_size, shape, device=device)
    y = torch.randint(0, preset.vocab_size, shape, device=device)

    def step():
        vmap_losses(models[0], params, x, y).sum().backward()
        clip_per_replica_([p.grad for p in opt.params], clip)
        opt.step(lr, wd)
        opt.zero_grad()

    return step


def measure(preset: Preset, log_progress: bool = True) -> dict[str, Any]:
    """Every row of the preset, and the ceiling, measured in this process."""
    import warnings

    import torch

    from nanigpt.measure.provenance import device_name
    from nanigpt.model.flops import count

    if preset.device == "cuda" and not torch.cuda.is_available():
        raise SweepError("--preset gpu needs a CUDA device; none is visible")
    if preset.threads:
        torch.set_num_threads(preset.threads)
    device = torch.device(preset.device)
    ceiling = matmul_ceiling(device)
    timing = (preset.warmup, preset.steps, preset.windows)
    total_steps = preset.warmup + preset.steps * preset.windows + 1
    rows, failed, jobs = [], [], []
    for size in preset.sizes:
        for mode in preset.modes:
            if mode == "compiled" and size not in preset.compiled_sizes:
                continue
            for k in preset.stack if mode == "stacked" else [8] if mode == "vmap" else [1]:
                jobs.append((size, "dense", mode, k))
    for size in preset.moe_sizes:
        jobs += [(size, "moe", "eager", 1), (size, "moe", "stacked", max(preset.stack))]
    for size, arch, mode, k in jobs:
        cfg = model_config(preset, size, moe=arch == "moe")
        captured = False
        try:
            if mode in ("eager", "compiled"):
                step = _eager_step(preset, cfg, device, compiled=mode == "compiled")
            elif mode == "vmap":
                step = _vmap_step(preset, cfg, device, k)
            else:
                runner = _stacked_runner(preset, cfg, device, k, total_steps)
                if mode != "nosync" and runner.capturable:
                    runner.capture()
                    captured = True
                step = runner.replay
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # vmap's fallback warning on the CPU's attention
                step_s = _timed(step, device, *timing)
        except (RuntimeError, torch.OutOfMemoryError) as e:  # one failed mode keeps the others
            log.warning(f"{size} {arch} {mode} K={k}: failed: {e}")
            failed.append(
                {"size": size, "arch": arch, "mode": mode, "replicas": k, "error": str(e)}
            )
            continue
        tokens_per_step = preset.batch_size * preset.seq_len
        flops_per_token = float(count(cfg, seq_len=preset.seq_len).train_flops_per_token)
        tokens_per_s = k * tokens_per_step / step_s
        row = {
            "size": size, "arch": arch, "mode": mode, "replicas": k, "captured": captured,
            "step_s": step_s, "tokens_per_s": tokens_per_s, "tokens_per_s_per_model":
            tokens_per_s / k, "flops_per_token": flops_per_token,
            "ceiling_share": flops_per_token * tokens_per_s / ceiling["flops"],
        }  # fmt: skip
        rows.append(row)
        if log_progress:
            log.info(
                f"{size} {arch} {mode} K={k}{' (graph)' if captured else ''}: "
                f"{step_s * 1e3:.2f} ms/step, {tokens_per_s:,.0f} tok/s, "
                f"{row['ceiling_share']:.2%} of the ceiling"
            )
        del step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    eager = {(r["size"], r["arch"]): r["tokens_per_s"] for r in rows if r["mode"] == "eager"}
    for r in rows:
        base = eager.get((r["size"], r["arch"]))
        r["speedup"] = r["tokens_per_s"] / base if base else None
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "preset": {k: v for k, v in vars(preset).items() if k != "notes"},
        "ceiling": ceiling,
        "rows": rows,
        "failed": failed,
    }


def figure(result: dict[str, Any]):
    """tokens/s (all replicas) per mode, one panel per size: Altair over a polars frame."""
    import altair as alt
    import polars as pl

    df = pl.DataFrame(result["rows"]).with_columns(
        pl.when(pl.col("mode") == "stacked")
        .then(pl.format("{}{} K={}", pl.col("arch"), pl.lit(" stacked"), pl.col("replicas")))
        .otherwise(pl.format("{} {}", pl.col("arch"), pl.col("mode")))
        .alias("label")
    )
    return (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("label:N", title=None, sort=None),
            y=alt.Y("tokens_per_s:Q", scale=alt.Scale(type="log"), title="tokens/s (all replicas)"),
            color=alt.Color("mode:N"),
            column=alt.Column("size:N", title=f"{result['device']}"),
            tooltip=["size", "arch", "mode", "replicas", "step_s", "ceiling_share", "speedup"],
        )
        .properties(width=160, height=220)
    )


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.bench.sweep", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--sizes", help="comma-separated sizes, overriding the preset's")
    parser.add_argument("--modes", help="comma-separated modes, overriding the preset's")
    parser.add_argument("--out", help="JSON to write (atomically)")
    parser.add_argument("--figure", help="figure to write (SVG or PNG, from its suffix)")
    parser.add_argument("--from-json", help="plot this sweep JSON instead of measuring")
    args = parser.parse_args(argv)
    if not args.out and not args.figure:
        parser.error("nothing to write: give --out and/or --figure")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    from nanigpt.io import read_json, write_json_atomic

    try:
        if args.from_json:
            result = read_json(args.from_json, what="sweep JSON")
        else:
            preset = PRESETS[args.preset]
            if args.sizes:
                sizes = args.sizes.split(",")
                unknown = sorted(set(sizes) - set(SIZES))
                if unknown:
                    raise SweepError(f"--sizes: unknown {unknown}; expected among {list(SIZES)}")
                preset = Preset(**{**vars(preset), "sizes": sizes})
            if args.modes:
                modes = args.modes.split(",")
                known = ("eager", "compiled", "nosync", "graph", "stacked", "vmap")
                unknown = sorted(set(modes) - set(known))
                if unknown:
                    raise SweepError(f"--modes: unknown {unknown}; expected among {list(known)}")
                preset = Preset(**{**vars(preset), "modes": modes})
            result = measure(preset)
        if args.out:
            write_json_atomic(args.out, result)
        if args.figure:
            from nanigpt.plots import save_chart

            save_chart(figure(result), args.figure)
    except (SweepError, FileNotFoundError) as e:
        print(f"nanigpt.bench.sweep: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
