"""Training throughput of our dense GPT beside nanoGPT's, measured by one harness in one call.

Serves core question 1 (where does time go in a step?) and the project's standing aim that, on one
GPU, our dense GPT trains faster than karpathy/nanoGPT. Both models run through the same loop, so
the comparison is of the models and their kernels, not of two trainers:

    bf16 autocast forward (loss), backward, grad-norm clip at 1.0, fused AdamW step,
    zero_grad(set_to_none), `torch.compile` of the model, random tokens already on the device.

Each (shape, implementation) runs in its own process (clean memory statistics and compile caches).
The processes of one shape compile concurrently and are then timed one at a time behind a file
lock, after all of them finished compiling, so a timed window never shares the GPU (or the host's
cores) with another process's compile. A row records tokens/s (median over timed windows), peak
memory, and MFU under two conventions:
- `mfu_palm`: (6 N + 12 L d T) tokens/s / peak, PaLM appendix B (Chowdhery et al. 2022), as
  nanoGPT's `estimate_mfu` computes it (N: parameters without position embeddings);
- `mfu_counted`: the project's counted matmul FLOPs per token (`nanigpt.model.flops`: full s x s
  attention scores with the fused kernels' 2.5x backward) for our model; for nanoGPT the same count
  of a GELU MLP (2 * 2 d * 4d per token forward instead of SwiGLU's 3 matmuls).
The peak is the datasheet's dense bf16 rate (`nanigpt.measure.hardware`); the measured matmul
ceiling is recorded beside it. A short profiler window per row gives the trace's kernel categories
(`nanigpt.analysis.trace_analysis`).

nanoGPT is never part of this repository: pass the folder holding its `model.py` (fetched
separately, e.g. into the ignored `.nanogpt/`) with `--nanogpt-dir`.

    python -m nanigpt.bench.throughput --out results/throughput/throughput.json \
        --nanogpt-dir .nanogpt --impls nanogpt,ours_torch,ours_triton

On the CPU, `--preset cpu` runs tiny shapes so the harness itself is tested.

`--waterfall` (issue 30) measures, per shape and beside nanoGPT, our GPT at each cumulative step of
`nanigpt.bench.waterfall.STEPS`: baseline, +fused projections, +fusable RoPE/norm, +attention
backend (the SDPA backend that ran fastest on this device, timed here first, forward and backward,
at the shape's attention size), +CUDA graphs (`torch.compile(mode="reduce-overhead")`: forward and
backward replayed as graphs; the clip and AdamW step stay outside), +fp8 lm_head, +fp8 everywhere
(torchao float8, rowwise). A step that cannot run here (fp8 without an fp8 GPU) is recorded as
skipped with its reason. The JSON holds the rows, the attention timings and the per-step table
(gain over the step before, its window spread, the verdict); the SVG beside it draws the table.

    python -m nanigpt.bench.throughput --waterfall --nanogpt-dir .nanogpt \
        --out results/throughput/waterfall.json
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("nanigpt.bench.throughput")

# name: (n_layer, d_model, n_head, batch), at seq 1024 and nanoGPT's padded GPT-2 vocabulary.
GPU_SHAPES = {
    "gpt2_124M_b32": (12, 768, 12, 32),
    "gpt2_350M_b16": (24, 1024, 16, 16),
}
CPU_SHAPES = {"tiny_b4": (2, 64, 4, 4)}
GPU_SEQ, CPU_SEQ = 1024, 64
GPU_VOCAB, CPU_VOCAB = 50304, 512
IMPLS = ("nanogpt", "ours_torch", "ours_triton")  # plus the waterfall's wf_<step> (waterfall.py)
LR, BETAS, WEIGHT_DECAY, GRAD_CLIP = 6e-4, (0.9, 0.95), 0.1, 1.0


class BenchError(RuntimeError):
    pass


def load_nanogpt(folder: Path):
    """nanoGPT's `model` module from `folder/model.py` (GPT, GPTConfig, configure_optimizers)."""
    path = Path(folder) / "model.py"
    if not path.is_file():
        raise BenchError(
            f"{path}: no nanoGPT model.py there; fetch karpathy/nanoGPT and pass its folder with "
            f"--nanogpt-dir"
        )
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("GPT", "GPTConfig"):
        if not hasattr(module, name):
            raise BenchError(f"{path}: has no {name}; expected nanoGPT's model.py")
    return module


def nanogpt_counted_flops_per_token(n_layer: int, d: int, vocab: int, seq: int) -> int:
    """Our counting convention applied to nanoGPT's model: q,k,v,o + a 4d GELU MLP + scores + head."""
    forward = n_layer * (2 * 4 * d * d + 2 * 2 * d * 4 * d) + 2 * d * vocab
    scores = n_layer * 2 * 2 * seq * d
    return 3 * forward + int(3.5 * scores)  # matmuls 1 + 2 (bwd); scores 1 + 2.5


def known_impl(impl: str) -> bool:
    from nanigpt.bench.waterfall import step_of

    return impl in IMPLS or step_of(impl) is not None


def build(impl: str, shape: tuple[int, int, int, int], seq: int, vocab: int, device, nanogpt_dir,
          attention_backend: str = "auto"):  # fmt: skip
    """(model, optimizer, loss_fn, counted FLOPs per token, N for the PaLM formula, settings)."""
    import torch

    from nanigpt.bench.waterfall import MEASURED, settings_at, step_of

    n_layer, d, n_head, _ = shape
    if impl == "nanogpt":
        ng = load_nanogpt(nanogpt_dir)
        cfg = ng.GPTConfig(
            block_size=seq, vocab_size=vocab, n_layer=n_layer, n_head=n_head, n_embd=d,
            dropout=0.0, bias=False,
        )  # fmt: skip
        model = ng.GPT(cfg).to(device)
        optimizer = model.configure_optimizers(WEIGHT_DECAY, LR, BETAS, device.type)
        n_palm = model.get_num_params()  # nanoGPT's estimate_mfu: position embeddings left out
        counted = nanogpt_counted_flops_per_token(n_layer, d, vocab, seq)
        return model, optimizer, (lambda out: out[1]), counted, n_palm, {}
    from nanigpt.model import flops
    from nanigpt.model.config import GPTConfig
    from nanigpt.model.gpt import GPT

    settings = {
        "vocab_size": vocab, "seq_len": seq, "n_layer": n_layer, "d_model": d, "n_head": n_head,
        "mlp_ratio": 8 / 3, "tied_embeddings": True, "moe": None,
    }  # fmt: skip
    step = step_of(impl)
    if impl == "ours_triton":
        settings["kernels"] = "triton"
    elif step is not None:
        options = settings_at(step)[0]
        if options.get("attention_backend") == MEASURED:
            options["attention_backend"] = attention_backend
        settings.update(options)
    elif impl != "ours_torch":
        raise BenchError(f"--impls: unknown implementation {impl!r}; expected one of {IMPLS}")
    cfg = GPTConfig.from_dict(settings)
    model = GPT(cfg).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = True if device.type == "cuda" else None
    optimizer = torch.optim.AdamW(groups, lr=LR, betas=BETAS, **({"fused": fused} if fused else {}))
    acc = flops.count(cfg)
    chosen = {k: v for k, v in settings.items() if k not in ("vocab_size", "seq_len", "moe")}
    return (
        model,
        optimizer,
        (lambda out: out.loss),
        acc.train_flops_per_token,
        acc.params.total,
        chosen,
    )


def _autocast(device):
    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _wait_for(ready_dir: Path | None, count: int, timeout_s: float = 900) -> None:
    """Barrier on files: return once `count` processes have written theirs into `ready_dir`."""
    if ready_dir is None:
        return
    deadline = time.monotonic() + timeout_s
    while len(list(ready_dir.glob("*.ready"))) < count:
        if time.monotonic() > deadline:
            raise BenchError(f"{ready_dir}: waited {timeout_s:.0f} s for {count} processes")
        time.sleep(0.5)


@contextlib.contextmanager
def _exclusive(lock_path: Path | None):
    if lock_path is None:
        yield
        return
    with lock_path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def measure_one(args: argparse.Namespace) -> dict[str, Any]:
    """Build, compile, warm up, then (alone on the device) time and profile one implementation."""
    import torch

    from nanigpt.measure.hardware import peak_bf16_flops
    from nanigpt.measure.provenance import device_name

    shapes, seq, vocab = presets(args.preset)
    shape = shapes[args.shape]
    n_layer, d, _, batch = shape
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    from nanigpt.bench.waterfall import settings_at, step_of

    step_name = step_of(args.impl)
    harness = settings_at(step_name)[1] if step_name else {}
    cuda_graphs = bool(harness.get("cuda_graphs")) and device.type == "cuda" and args.compile
    model, optimizer, loss_of, counted, n_palm, settings = build(
        args.impl, shape, seq, vocab, device, args.nanogpt_dir, args.attention_backend
    )
    if args.compile:
        mode = "reduce-overhead" if cuda_graphs else None
        step_model = torch.compile(model, mode=mode)
    else:
        step_model = model
    gen = torch.Generator(device="cpu").manual_seed(1)
    batches = []  # contiguous inputs and targets, as a data loader hands them over
    for _ in range(4):
        data = torch.randint(0, vocab, (batch, seq + 1), generator=gen)
        batches.append((data[:, :-1].contiguous().to(device), data[:, 1:].contiguous().to(device)))

    def step(i: int) -> torch.Tensor:
        x, y = batches[i % len(batches)]
        if cuda_graphs:  # a new step: the graphs' output buffers may be reused
            torch.compiler.cudagraph_mark_step_begin()
        with _autocast(device):
            loss = loss_of(step_model(x, y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach().clone() if cuda_graphs else loss.detach()

    started = time.monotonic()
    losses = [step(i) for i in range(3 if cuda_graphs else 2)]  # compiles (and records graphs)
    _sync(device)
    compile_s = time.monotonic() - started
    if device.type == "cuda":  # leave the device's memory to the processes timed meanwhile
        torch.cuda.empty_cache()
    if args.ready_dir:
        (args.ready_dir / f"{args.impl}.ready").write_text("")
    _wait_for(args.ready_dir, args.ready_count)
    with _exclusive(args.lock):
        for i in range(args.warmup):
            losses.append(step(i))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        windows = []
        for _ in range(args.windows):
            _sync(device)
            t0 = time.perf_counter()
            for i in range(args.steps):
                losses.append(step(i))
            _sync(device)
            windows.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        # CUDA graphs allocate their pool while recording (before the reset): reserved shows it
        reserved = torch.cuda.memory_reserved(device) if device.type == "cuda" else None
        categories = profile_categories(step, device, args.profile_steps)
    tokens_per_step = batch * seq
    tps_samples = [args.steps * tokens_per_step / w for w in windows]
    tps = statistics.median(tps_samples)
    peak_flops = peak_bf16_flops(device_name(device) if device.type == "cuda" else None)
    palm_per_token = 6 * n_palm + 12 * n_layer * d * seq
    final_loss = float(torch.stack(losses[-args.steps :]).float().mean())
    if not torch.isfinite(torch.tensor(final_loss)):
        raise BenchError(f"{args.impl} {args.shape}: non-finite loss {final_loss}")
    return {
        "shape": args.shape,
        "impl": args.impl,
        "tokens_per_s": tps,
        "tokens_per_s_samples": tps_samples,
        "mfu_palm": palm_per_token * tps / peak_flops if peak_flops else None,
        "mfu_counted": counted * tps / peak_flops if peak_flops else None,
        "peak_mem_gib": peak / 2**30 if peak is not None else None,
        "reserved_mem_gib": reserved / 2**30 if reserved is not None else None,
        "params_palm": n_palm,
        "flops_per_token_palm": palm_per_token,
        "flops_per_token_counted": counted,
        "peak_flops": peak_flops,
        "compile_s": compile_s,
        "loss_mean_last_window": final_loss,
        "steps_per_window": args.steps,
        "batch": batch,
        "seq_len": seq,
        "device": device_name(device),
        "kernel_categories": categories,
        "settings": {**settings, "cuda_graphs": cuda_graphs} if settings else None,
    }


def profile_categories(step, device, steps: int) -> dict[str, Any] | None:
    """Wall share per kernel category over `steps` profiled steps (None when steps is 0)."""
    if steps <= 0:
        return None
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    from nanigpt.analysis.trace_analysis import analyze, load_trace

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with tempfile.TemporaryDirectory() as tmp:
        trace_path = Path(tmp) / "trace.json"
        with profile(
            activities=activities,
            schedule=schedule(wait=0, warmup=1, active=steps),
            on_trace_ready=lambda p: p.export_chrome_trace(str(trace_path)),
        ) as prof:
            for i in range(steps + 1):
                step(i)
                prof.step()
        _sync(device)
        del torch
        result = analyze(load_trace(trace_path))
    summary = result.summary()
    return {
        "mode": summary["mode"],
        "steps": summary["steps"],
        "window_s": summary["window_s"],
        "wall_share": summary["wall_share"],
        "top_names": summary["top_names"],
    }


def presets(name: str) -> tuple[dict[str, tuple[int, int, int, int]], int, int]:
    if name == "gpu":
        return GPU_SHAPES, GPU_SEQ, GPU_VOCAB
    if name == "cpu":
        return CPU_SHAPES, CPU_SEQ, CPU_VOCAB
    raise BenchError(f"--preset {name!r}: expected gpu or cpu")


def _child_argv(args: argparse.Namespace, impl: str, shape: str, row: Path, sync: Path,
                count: int, attention: str) -> list:  # fmt: skip
    argv = [
        sys.executable, "-m", "nanigpt.bench.throughput", "--one", "--impl", impl,
        "--shape", shape, "--preset", args.preset, "--row-out", str(row),
        "--steps", str(args.steps), "--windows", str(args.windows), "--warmup", str(args.warmup),
        "--profile-steps", str(args.profile_steps), "--lock", str(sync / "lock"),
        "--ready-dir", str(sync), "--ready-count", str(count), "--attention-backend", attention,
    ]  # fmt: skip
    if args.nanogpt_dir:
        argv += ["--nanogpt-dir", str(args.nanogpt_dir)]
    if not args.compile:
        argv.append("--no-compile")
    return argv


def time_attention_backends(shape: tuple[int, int, int, int], seq: int, repeats: int = 10
                            ) -> dict[str, Any]:  # fmt: skip
    """Forward + backward time of causal SDPA on each pinned backend at the shape's attention size
    (q, k, v in the projections' [B, T, H, D] layout, transposed, as the model passes them; bf16 on
    a GPU), and the fastest one: the waterfall's "attention backend" step. A backend that cannot
    run here is recorded with its error."""
    import torch

    from nanigpt.model.gpt import causal_attention, sdpa_backends

    n_layer, d, n_head, batch = shape
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    gen = torch.Generator(device=device).manual_seed(0)
    qkv = [
        torch.randn(batch, seq, n_head, d // n_head, device=device, dtype=dtype, generator=gen)
        .transpose(1, 2)
        .requires_grad_()
        for _ in range(3)
    ]
    timings: dict[str, Any] = {}
    for name in ("flash", "cudnn", "efficient", "math"):
        backends = sdpa_backends(name)

        def once() -> None:
            causal_attention(*qkv, backends).sum().backward()  # noqa: B023

        try:
            for _ in range(2):
                once()
            _sync(torch.device(device))
            t0 = time.perf_counter()
            for _ in range(repeats):
                once()
            _sync(torch.device(device))
            timings[name] = {"ms": 1e3 * (time.perf_counter() - t0) / repeats}
        except RuntimeError as error:
            timings[name] = {"error": str(error).splitlines()[0][:200]}
    qkv.clear()
    if cuda:  # the math backend's score matrices: give them back before the children start
        torch.cuda.empty_cache()
    ran = {k: v["ms"] for k, v in timings.items() if "ms" in v}
    if not ran:
        raise BenchError(f"attention: no SDPA backend ran here ({timings})")
    return {"timings": timings, "chosen": min(ran, key=ran.get)}


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Per shape: start one process per implementation, wait, collect their rows.

    Returns {"rows", "failures", "skipped", "attention"}; `args.out` is rewritten after each
    shape (the rows list, or with --waterfall the whole result)."""
    from nanigpt.bench.waterfall import needs_fp8, step_of
    from nanigpt.io import write_json_atomic
    from nanigpt.model.fp8 import fp8_unavailable_reason

    shapes, seq, _ = presets(args.preset)
    chosen = args.shapes.split(",") if args.shapes else list(shapes)
    for name in chosen:
        if name not in shapes:
            raise BenchError(f"--shapes: unknown shape {name!r}; expected some of {list(shapes)}")
    steps = {impl: step_of(impl) for impl in args.impl_list}
    fp8_reason = (
        fp8_unavailable_reason() if any(s and needs_fp8(s) for s in steps.values()) else None
    )
    result: dict[str, Any] = {"rows": [], "failures": [], "skipped": [], "attention": {}}
    rows, failures = result["rows"], result["failures"]
    work = Path(tempfile.mkdtemp(prefix="nanigpt-throughput-"))
    for shape in chosen:
        sync = work / shape
        sync.mkdir()
        args.attention_chosen = "auto"
        if any(s is not None for s in steps.values()):
            result["attention"][shape] = time_attention_backends(shapes[shape], seq)
            args.attention_chosen = result["attention"][shape]["chosen"]
            log.info(f"{shape} attention: {result['attention'][shape]}")
        runnable = []
        for impl in args.impl_list:
            if fp8_reason and steps[impl] and needs_fp8(steps[impl]):
                result["skipped"].append({"shape": shape, "impl": impl, "reason": fp8_reason})
                log.info(f"{shape} {impl}: skipped ({fp8_reason})")
            else:
                runnable.append(impl)
        # At most --parallel processes hold the device at once (each compiles and takes its
        # first steps' peak memory concurrently; 8 GPT-2 processes do not fit in 80 GB).
        for first in range(0, len(runnable), args.parallel):
            group = runnable[first : first + args.parallel]
            _run_group(args, group, shape, work, sync / f"group{first}", rows, failures)
        if args.waterfall:
            write_json_atomic(args.out, waterfall_result(result, args))
        else:
            write_json_atomic(args.out, rows)
            if failures:
                write_json_atomic(args.out.with_name(args.out.stem + "_failures.json"), failures)
    return result


def _run_group(args, group: list[str], shape: str, work: Path, sync: Path, rows: list,
               failures: list) -> None:  # fmt: skip
    """One process per implementation of `group`: compile together, then timed one at a time."""
    attention = args.attention_chosen
    sync.mkdir()
    procs = {}
    for impl in group:
        row, logf = sync / f"{impl}.json", (work / f"{shape}_{impl}.log").open("w")
        argv = _child_argv(args, impl, shape, row, sync, len(group), attention)
        procs[impl] = (
            subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT),
            row,
            logf,
        )
    pending = dict(procs)
    while pending:  # a process that fails never reaches the barrier: release it at once
        for impl, (proc, row, logf) in list(pending.items()):
            code = proc.poll()
            if code is None:
                continue
            del pending[impl]
            logf.close()
            if code == 0 and row.exists():
                rows.append(json.loads(row.read_text()))
                r = rows[-1]
                log.info(
                    f"{shape} {impl}: {r['tokens_per_s']:,.0f} tok/s, MFU palm "
                    f"{r['mfu_palm']}, counted {r['mfu_counted']}, peak {r['peak_mem_gib']} GiB"
                )
                continue
            tail = (work / f"{shape}_{impl}.log").read_text()[-2000:]
            failures.append({"shape": shape, "impl": impl, "exit_code": code, "log": tail})
            log.error(f"{shape} {impl} failed ({code}):\n{tail}")
            (sync / f"{impl}.ready").write_text("")
        time.sleep(0.2)


def waterfall_result(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from nanigpt.bench.waterfall import summarize

    rows = result["rows"]
    meta = {
        "device": rows[0]["device"] if rows else None,
        "preset": args.preset,
        "steps_per_window": args.steps,
        "windows": args.windows,
        "warmup": args.warmup,
        "compile": args.compile,
    }
    return {"meta": meta, "steps": summarize(rows, result["skipped"]), **result}


def ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """tokens/s of each of our implementations over nanoGPT's, per shape."""
    out: dict[str, dict[str, float]] = {}
    by = {(r["shape"], r["impl"]): r["tokens_per_s"] for r in rows}
    for (shape, impl), tps in by.items():
        base = by.get((shape, "nanogpt"))
        if impl != "nanogpt" and base:
            out.setdefault(shape, {})[impl] = tps / base
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nanigpt.bench.throughput", description=__doc__)
    p.add_argument("--out", type=Path, help="throughput.json: a list of rows")
    p.add_argument("--preset", default=None, help="gpu or cpu (default: gpu when CUDA is there)")
    p.add_argument("--shapes", default=None, help="comma-separated shape names (default: all)")
    p.add_argument("--impls", default=None, help="default nanogpt,ours_torch,ours_triton")
    p.add_argument(
        "--waterfall", action="store_true",
        help="measure nanoGPT and each cumulative optimisation step (nanigpt.bench.waterfall)",
    )  # fmt: skip
    p.add_argument(
        "--svg", type=Path, default=None, help="(--waterfall) figure; default beside --out"
    )
    p.add_argument("--draw", type=Path, default=None, help="draw the SVG of a waterfall JSON only")
    p.add_argument("--attention-backend", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--nanogpt-dir", type=Path, default=None, help="folder of nanoGPT's model.py")
    p.add_argument("--steps", type=int, default=10, help="steps per timed window")
    p.add_argument("--windows", type=int, default=3, help="timed windows (median reported)")
    p.add_argument("--warmup", type=int, default=5, help="steps after compiling, before timing")
    p.add_argument("--profile-steps", type=int, default=3, help="profiled steps (0: no trace)")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument(
        "--parallel", type=int, default=2,
        help="processes compiling on the device at once (2 fits GPT-2 350M in 80 GB; a CUDA-graph "
        "process keeps its graphs' memory while it waits for its timed turn)",
    )  # fmt: skip
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    p.add_argument("--row-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--lock", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--ready-dir", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--ready-count", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.draw is not None:
        return args
    if args.preset is None:
        import torch

        args.preset = "gpu" if torch.cuda.is_available() else "cpu"
    if args.waterfall and args.impls is None:  # every step (--impls picks some: nanogpt, wf_<step>)
        from nanigpt.bench.waterfall import STEP_NAMES, impl_name

        args.impls = ",".join(["nanogpt", *(impl_name(s) for s in STEP_NAMES)])
    elif args.impls is None:
        args.impls = ",".join(IMPLS)
    args.impl_list = [i for i in args.impls.split(",") if i]
    for impl in args.impl_list:
        if not known_impl(impl):
            p.error(f"--impls: unknown implementation {impl!r}; expected some of {IMPLS}")
    if "nanogpt" in args.impl_list and not args.one and args.nanogpt_dir is None:
        p.error("--impls includes nanogpt: pass --nanogpt-dir (the folder of nanoGPT's model.py)")
    if not args.one and args.out is None:
        if not args.waterfall:
            p.error("--out is required")
        args.out = Path("results/throughput/waterfall.json")
    for key in ("steps", "windows", "parallel"):
        if getattr(args, key) < 1:
            p.error(f"--{key}: expected an integer >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.draw is not None:
        return draw_svg(args.draw, args.svg or args.draw.with_suffix(".svg"))
    try:
        if args.one:
            from nanigpt.io import write_json_atomic

            write_json_atomic(args.row_out, measure_one(args))
            return 0
        result = run_all(args)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = result["rows"]
    for shape, by_impl in ratios(rows).items():
        for impl, ratio in by_impl.items():
            log.info(f"{shape}: {impl} / nanogpt = {ratio:.3f}x tokens/s")
    if args.waterfall:
        for s in waterfall_result(result, args)["steps"]:
            if s["status"] == "ok" and "gain" in s:
                verdict = "" if s["significant"] else " (within the spread: no gain)"
                log.info(
                    f"{s['shape']} +{s['step']}: {s['gain']:+.1%} (spread {s['gain_noise']:.1%})"
                    f"{verdict}, {s['vs_nanogpt']}x nanoGPT"
                )
        try:
            import altair  # noqa: F401
        except ImportError:
            log.info(f"altair is not installed here: draw later with --draw {args.out}")
        else:
            draw_svg(args.out, args.svg or args.out.with_suffix(".svg"))
    expected = len(args.impl_list) * len(
        args.shapes.split(",") if args.shapes else presets(args.preset)[0]
    )
    return 0 if len(rows) + len(result["skipped"]) == expected else 1


def draw_svg(path: Path, svg: Path) -> int:
    """Draw a waterfall JSON's figure; a missing or malformed file is a one-line error (exit 2)."""
    from nanigpt.bench.waterfall import draw
    from nanigpt.io import read_json

    try:
        result = read_json(path, "waterfall JSON")
        draw(result, svg)
    except (OSError, KeyError, ValueError) as error:
        print(f"error: {path}: {error}", file=sys.stderr)
        return 2
    log.info(f"wrote {svg}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
