"""Kernel benchmark: how close is each kernel to the device's ceilings, against torch and Liger? (core question 6)

For every kernel of `nanigpt.kernels` and direction (fwd, bwd, fwd_bwd) it times, in one process:
- `eager`: the op the model runs with `model.kernels: torch` (F.rms_norm, the rotary of
  `rope_reference`, F.silu(g) * u, F.linear + float32 F.cross_entropy);
- `compiled`: `torch.compile` of that op;
- `triton`: ours;
- `liger`: Liger-Kernel's equivalent (Hsu et al. 2024, arXiv 2410.10989) when `import liger_kernel`
  works (never a dependency of the project; a missing one is a row with the reason).
GPU timings, two per row: `time_s` is `triton.testing.do_bench` (back-to-back calls timed with CUDA
events, L2 flushed before every call, 20/50/80% quantiles of the repeats), which includes the host
time of each call wherever the host is slower than the kernel (small ops: Python dispatch,
autograd, allocation); `time_graph_s` captures the call 2-64 times (about 10 ms of work) in one
CUDA graph on a side stream and times 10 replays with CUDA events, per call (the method of
`triton.testing.do_bench_cudagraph`, with the number of calls bounded so the graph's memory stays
small): device time only, L2 not flushed between calls. GB/s and
the ceiling fraction come from the graph timing where there is one (`timing: "graph"`; the
kernel's roofline figure), else from `time_s` (`timing: "calls"`); `gb_per_s_calls` and
`ceiling_fraction_calls` always hold the back-to-back figures. A call that cannot be captured
leaves `time_graph_s` empty with `graph_reason`. The fused cross-entropy (a host loop of matmuls)
is not graph-timed. At a size that fits L2 a graph replay may read from it: the large RMSNorm case
(several times L2) is the HBM figure. At that case `triton_sweep` rows time our RMSNorm under a few
other launch settings (`launch_config`: forward tile/warps, backward tile/warps/programs per SM),
in the JSON only, to pick the defaults from. CPU timings are the median of a few
`time.perf_counter` repeats, where the Triton rows run in Triton's interpreter
(`interpreted: true`: correctness, not speed).

Bytes are the minimal traffic of the op (each input read once, each output written once; for the
norm's backward x, dy and w in, dx and dw out; fwd_bwd the sum of the two), so GB/s over it and its fraction of the measured
copy bandwidth (`results/hardware/{device}.json`, `nanigpt.analysis.ceilings`; measured here when the
file is missing) say how close a kernel is to the memory roofline. The fused cross-entropy is
matmul-bound (6 N d V FLOPs fwd+bwd): its fraction is of the measured matmul FLOP/s. FLOP counts of
the elementwise kernels are approximate (per element: RMSNorm 4 fwd / 8 bwd, RoPE 3 / 3, SwiGLU
5 / 10), used only to place them on the roofline. Every row also holds its relative error against
the float32 reference of the kernel's module (`rel_err`, ||impl - ref|| / ||ref|| over outputs or
gradients), so a wrong kernel shows in the JSON; `peak_mem_bytes` is the CUDA peak-memory rise of
one fwd_bwd call.

    python -m nanigpt.kernels.bench --out results/kernels/bench.json [--preset cpu|gpu]
    python -m nanigpt.kernels.bench --chart-from results/kernels/bench.json --out X.svg

Writes bench.json ({"meta", "rows"}), bench.parquet (the rows) and bench.svg beside --out.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import nanigpt.kernels  # noqa: F401  (sets TRITON_INTERPRET on a CPU-only machine first)
from nanigpt.io import atomic_path, read_json, write_json_atomic
from nanigpt.kernels import interpreted
from nanigpt.kernels.cross_entropy import linear_cross_entropy, linear_cross_entropy_reference
from nanigpt.kernels.rms_norm import rms_norm, rms_norm_reference
from nanigpt.kernels.rope import rope, rope_reference
from nanigpt.kernels.swiglu import swiglu, swiglu_reference
from nanigpt.measure.provenance import device_name, package_versions

IMPLS = ("eager", "compiled", "triton", "liger")
DIRECTIONS = ("fwd", "bwd", "fwd_bwd")
EPS = 1e-5
MLP_MULTIPLE = 8

# name -> shapes; GPT-2 124M / 350M-like at 32 x 1024 tokens, MLP 8/3 d, vocab 50304 and 128256.
PRESETS: dict[str, dict[str, list[tuple[str, tuple[int, ...]]]]] = {
    "gpu": {
        # d768 / d1024 at 32k tokens (50-67 MB) are about the 60 MB L2; d1024_large is several
        # times it, so its graph timing is the HBM figure (and where the launch sweep runs).
        "rms_norm": [
            ("d768", (32768, 768)),
            ("d1024", (32768, 1024)),
            ("d1024_large", (131072, 1024)),
        ],  # fmt: skip
        "rope": [("h12", (32, 1024, 12, 64)), ("h16", (32, 1024, 16, 64))],
        "swiglu": [("d768", (32768, 2048)), ("d1024", (32768, 2728))],
        "cross_entropy": [
            ("d768_v50304", (32768, 768, 50304)),
            ("d1024_v50304", (32768, 1024, 50304)),
            ("d768_v128256", (32768, 768, 128256)),
        ],
    },
    "cpu": {  # small: the Triton rows run in the interpreter, about 1 ms per program
        "rms_norm": [("d40", (16, 40))],
        "rope": [("h2", (2, 8, 2, 8))],
        "swiglu": [("h40", (16, 40))],
        "cross_entropy": [("d16_v100", (16, 16, 100))],
    },
}
# FLOPs per element (approximate; see the docstring), fwd and bwd.
ELEMENT_FLOPS = {"rms_norm": (4, 8), "rope": (3, 3), "swiglu": (5, 10)}
TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}


@dataclass
class Case:
    kernel: str
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    inputs: tuple[torch.Tensor, ...]  # the ones that get gradients
    extra: tuple[Any, ...]  # arguments that do not (targets, cos, sin)
    reference: Callable[..., Any]  # float32 reference of the kernel's module
    impls: dict[str, Callable[..., Any]] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    flops: dict[str, int] = field(default_factory=dict)
    ceiling: str = "copy"  # "copy" (memory-bound) or "matmul"
    cache: tuple | None = None  # reference_results


def _rand(shape, dtype, device, gen, scale=1.0) -> torch.Tensor:
    x = torch.randn(shape, generator=gen, device="cpu") * scale
    return x.to(device=device, dtype=dtype).requires_grad_()


def _directions(read_fwd: int, write_fwd: int, read_bwd: int, write_bwd: int) -> dict[str, int]:
    """Minimal bytes of each direction; fwd_bwd is the sum of the two passes."""
    fwd, bwd = read_fwd + write_fwd, read_bwd + write_bwd
    return {"fwd": fwd, "bwd": bwd, "fwd_bwd": fwd + bwd}


def rms_norm_case(name, shape, dtype, device, gen) -> Case:
    n, d = shape
    e = torch.empty((), dtype=dtype).element_size()
    x, w = _rand(shape, dtype, device, gen), _rand((d,), dtype, device, gen, 0.1)
    with torch.no_grad():
        w += 1
    case = Case("rms_norm", name, shape, dtype, (x, w), (),
                lambda x, w: rms_norm_reference(x, w, EPS))  # fmt: skip
    case.impls = {"eager": lambda x, w: F.rms_norm(x, (d,), w, EPS),
                  "triton": lambda x, w: rms_norm(x, w, EPS)}  # fmt: skip
    case.bytes = _directions((n * d + d) * e, n * d * e, (2 * n * d + d) * e, (n * d + d) * e)
    fwd, bwd = ELEMENT_FLOPS["rms_norm"]
    case.flops = {"fwd": fwd * n * d, "bwd": bwd * n * d, "fwd_bwd": (fwd + bwd) * n * d}
    return case


def rope_case(name, shape, dtype, device, gen) -> Case:
    from nanigpt.model.gpt import rotary_tables

    batch, time_, heads, head_dim = shape
    e = torch.empty((), dtype=dtype).element_size()
    q, k = _rand(shape, dtype, device, gen), _rand(shape, dtype, device, gen)
    cos, sin = (t.to(device) for t in rotary_tables(time_, head_dim, 10000.0))
    case = Case("rope", name, shape, dtype, (q, k), (cos, sin), rope_reference)
    case.impls = {"eager": rope_reference, "triton": rope}
    n = q.numel() + k.numel()
    tables = 2 * cos.numel() * 4
    case.bytes = _directions(n * e + tables, n * e, n * e + tables, n * e)
    fwd, bwd = ELEMENT_FLOPS["rope"]
    case.flops = {"fwd": fwd * n, "bwd": bwd * n, "fwd_bwd": (fwd + bwd) * n}
    return case


def swiglu_case(name, shape, dtype, device, gen) -> Case:
    e = torch.empty((), dtype=dtype).element_size()
    gate, up = _rand(shape, dtype, device, gen), _rand(shape, dtype, device, gen)
    case = Case("swiglu", name, shape, dtype, (gate, up), (), swiglu_reference)
    case.impls = {"eager": lambda g, u: F.silu(g) * u, "triton": swiglu}
    n = gate.numel()
    case.bytes = _directions(2 * n * e, n * e, 3 * n * e, 2 * n * e)
    fwd, bwd = ELEMENT_FLOPS["swiglu"]
    case.flops = {"fwd": fwd * n, "bwd": bwd * n, "fwd_bwd": (fwd + bwd) * n}
    return case


def cross_entropy_case(name, shape, dtype, device, gen) -> Case:
    n, d, vocab = shape
    e = torch.empty((), dtype=dtype).element_size()
    h, w = _rand((n, d), dtype, device, gen), _rand((vocab, d), dtype, device, gen, 0.02)
    targets = torch.randint(0, vocab, (n,), generator=gen).to(device)

    def reference(h, w, t):
        return linear_cross_entropy_reference(h.float(), w.float(), t)

    case = Case("cross_entropy", name, shape, dtype, (h, w), (targets,), reference)
    case.impls = {"eager": linear_cross_entropy_reference, "triton": linear_cross_entropy}
    io = (n * d + vocab * d) * e
    case.bytes = _directions(io + 8 * n, 4, io, io)
    matmul = 2 * n * d * vocab
    case.flops = {"fwd": matmul, "bwd": 2 * matmul, "fwd_bwd": 3 * matmul}
    case.ceiling = "matmul"
    return case


BUILDERS = {"rms_norm": rms_norm_case, "rope": rope_case, "swiglu": swiglu_case,
            "cross_entropy": cross_entropy_case}  # fmt: skip


def liger_impls() -> tuple[dict[str, Callable[..., Any]], str | None]:
    """Liger-Kernel's functions by kernel, adapted to our signatures; ({}, reason) without it."""
    try:
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction
        from liger_kernel.ops.rope import LigerRopeFunction
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except Exception as e:  # ImportError, or a Liger/triton version mismatch at import
        return {}, f"liger_kernel not importable: {type(e).__name__}: {e}"[:300]

    def liger_rope(q, k, cos, sin):
        full_cos, full_sin = (torch.cat((t, t), -1)[None] for t in (cos, sin))  # HF layout
        q_out, k_out = LigerRopeFunction.apply(
            q.transpose(1, 2), k.transpose(1, 2), full_cos, full_sin
        )
        return q_out.transpose(1, 2), k_out.transpose(1, 2)

    flce = LigerFusedLinearCrossEntropyLoss()

    def liger_ce(h, w, targets):
        out = flce(w, h, targets)
        return out[0] if isinstance(out, tuple) else out

    return {
        "rms_norm": lambda x, w: LigerRMSNormFunction.apply(x, w, EPS),
        "rope": liger_rope,
        "swiglu": LigerSiLUMulFunction.apply,
        "cross_entropy": liger_ce,
    }, None


# ---------------------------------------------------------------------------------------------
# Timing, memory, correctness


def time_call(fn: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
    """(p20, median, p80) seconds per call of fn."""
    if device.type == "cuda":
        import triton.testing

        ms = triton.testing.do_bench(fn, warmup=25, rep=300, quantiles=[0.2, 0.5, 0.8])
        return [m / 1e3 for m in ms]
    if not interpreted():
        fn()  # warm-up (the interpreter has nothing to warm and is slow)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return [samples[0], statistics.median(samples), samples[-1]]


def _graph_seconds(fn: Callable[[], Any], device: torch.device, n_calls: int) -> list[float]:
    """Capture n_calls of fn in one CUDA graph on a side stream; seconds per call of 10 replays."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        fn()  # warm-up on the capture stream (a retained forward is built there)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(n_calls):
                fn()
        graph.replay()
        seconds = []
        for _ in range(10):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            graph.replay()
            end.record(stream)
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1e3 / n_calls)
    torch.cuda.current_stream(device).wait_stream(stream)
    del graph
    return sorted(seconds)


def time_graph(
    fn: Callable[[], Any], device: torch.device, call_s: float
) -> tuple[list[float] | None, str | None]:
    """((p20, median, p80) s per call replayed in a CUDA graph, None), or (None, reason).

    About 10 ms of calls (by `call_s`, the back-to-back time; 2 to 64 calls) go into one graph,
    so host time drops out and launch gaps are the device's own."""
    if device.type != "cuda":
        return None, "CUDA graphs need a GPU"
    n_calls = max(2, min(64, int(0.01 / max(call_s, 1e-7))))
    try:
        seconds = _graph_seconds(fn, device, n_calls)
        torch.cuda.synchronize(device)
    except Exception as e:  # an op that cannot be captured (a host sync, a CPU tensor) is a reason
        try:
            torch.cuda.synchronize(device)
        except Exception as after:  # a capture error that stuck to the context: say so too
            e = RuntimeError(f"{type(e).__name__}: {e}; then {type(after).__name__}: {after}")
        return None, f"graph capture failed: {type(e).__name__}: {e}"[:300]
    finally:
        gc.collect()
    return [seconds[2], statistics.median(seconds), seconds[7]], None


def _as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def rel_err(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> float:
    worst = 0.0
    for a, b in zip(got, want, strict=True):
        a, b = a.detach().float(), b.detach().float()
        worst = max(worst, float((a - b).norm() / b.norm().clamp_min(1e-30)))
    return worst


def reference_results(case: Case) -> tuple[tuple, tuple, tuple]:
    """(grad_out, reference outputs, reference gradients), float32, computed once per case."""
    if case.cache is None:
        ref_in = tuple(x.detach().float().requires_grad_() for x in case.inputs)
        ref_out = _as_tuple(case.reference(*ref_in, *case.extra))
        gen = torch.Generator().manual_seed(1)
        grad_out = tuple(
            torch.randn(o.shape, generator=gen).to(o.device) if o.dim() else torch.ones_like(o)
            for o in ref_out
        )
        ref_grads = torch.autograd.grad(ref_out, ref_in, grad_out)
        case.cache = (
            tuple(g.to(case.dtype) for g in grad_out),
            tuple(o.detach() for o in ref_out),
            ref_grads,
        )
    return case.cache


def check(case: Case, fn: Callable[..., Any]) -> dict[str, float]:
    """Relative error of outputs (fwd) and gradients (bwd) against the float32 reference."""
    grad_out, ref_out, ref_grads = reference_results(case)
    inputs = tuple(x.detach().clone().requires_grad_() for x in case.inputs)
    out = _as_tuple(fn(*inputs, *case.extra))
    grads = torch.autograd.grad(out, inputs, tuple(g.clone() for g in grad_out))  # Liger writes dy
    return {"fwd": rel_err(out, ref_out), "bwd": rel_err(grads, ref_grads)}


class Calls:
    """The three timed calls of one implementation; `bwd` reuses one retained forward graph."""

    def __init__(self, case: Case, fn: Callable[..., Any]):
        self.case, self.fn = case, fn
        self.grad_out = reference_results(case)[0]
        self.out: tuple[torch.Tensor, ...] | None = None

    def fwd(self):
        return self.fn(*self.case.inputs, *self.case.extra)

    def bwd(self):
        if self.out is None:
            self.out = _as_tuple(self.fwd())
        return torch.autograd.grad(self.out, self.case.inputs, self.grad_out, retain_graph=True)

    def fwd_bwd(self):
        self.out = None  # free the retained graph first (the eager 128k loss holds tens of GiB)
        return torch.autograd.grad(_as_tuple(self.fwd()), self.case.inputs, self.grad_out)


def peak_memory(call: Callable[[], Any], device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    result = call()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del result
    return int(peak)


# ---------------------------------------------------------------------------------------------
# Ceilings and the run


def ceilings(device: torch.device, hardware: Path | None) -> dict[str, Any]:
    """Copy bandwidth and matmul FLOP/s: from results/hardware/{slug}.json, else measured here."""
    from nanigpt.analysis.ceilings import measure_copy, measure_matmul
    from nanigpt.measure.hardware import slugify

    slug = "cpu" if device.type == "cpu" else slugify(device_name(device))
    path = hardware or Path("results/hardware") / f"{slug}.json"
    if path.exists():
        hw = read_json(path, what="hardware ceilings file")
        return {"copy_bytes_per_s": float(hw["copy_bytes_per_s"]),
                "matmul_flops_per_s": float(hw["matmul_flops_per_s"]),
                "ceilings_source": str(path), "device_slug": slug}  # fmt: skip
    gpu = device.type == "cuda"
    copy = measure_copy(device, (1 << 30) if gpu else (32 << 20), 10 if gpu else 3, 2)
    matmul = measure_matmul(device, 8192 if gpu else 512, torch.bfloat16 if gpu else torch.float32,
                            10 if gpu else 3, 2)  # fmt: skip
    return {"copy_bytes_per_s": copy["bytes_per_s"], "matmul_flops_per_s": matmul["flops_per_s"],
            "ceilings_source": f"measured in the bench ({path} missing)", "device_slug": slug}  # fmt: skip


def _row(case: Case, impl: str, direction: str, **values: Any) -> dict[str, Any]:
    row = {"kernel": case.kernel, "case": case.name, "shape": "x".join(map(str, case.shape)),
           "dtype": str(case.dtype).removeprefix("torch."), "impl": impl, "direction": direction,
           "status": "ok", "reason": None, "interpreted": impl == "triton" and interpreted(),
           "bytes": case.bytes[direction], "flops": case.flops[direction], "ceiling": case.ceiling,
           "time_s": None, "time_p20_s": None, "time_p80_s": None, "gb_per_s": None,
           "tflop_per_s": None, "ceiling_fraction": None, "intensity": None,
           "time_graph_s": None, "time_graph_p20_s": None, "time_graph_p80_s": None,
           "graph_reason": None, "timing": None, "gb_per_s_calls": None,
           "ceiling_fraction_calls": None, "launch_config": None,
           "peak_mem_bytes": None, "rel_err": None, "rel_err_ok": None}  # fmt: skip
    row["intensity"] = row["flops"] / row["bytes"]
    row.update(values)
    return row


def _rates(case: Case, direction: str, seconds: float, ceil: dict[str, Any]) -> tuple:
    """(GB/s, TFLOP/s, fraction of the case's ceiling) at `seconds` per call."""
    gb, tflop = case.bytes[direction] / seconds / 1e9, case.flops[direction] / seconds / 1e12
    if case.ceiling == "copy":
        return gb, tflop, case.bytes[direction] / seconds / ceil["copy_bytes_per_s"]
    return gb, tflop, case.flops[direction] / seconds / ceil["matmul_flops_per_s"]


def measure_impl(case, impl, fn, device, repeats, ceil) -> list[dict[str, Any]]:
    errors = check(case, fn)
    calls = Calls(case, fn)
    rows = []
    for direction in DIRECTIONS:
        p20, median, p80 = time_call(getattr(calls, direction), device, repeats)
        err = errors["fwd" if direction == "fwd" else "bwd"]
        row = _row(case, impl, direction, time_s=median, time_p20_s=p20, time_p80_s=p80,
                   rel_err=err, rel_err_ok=err <= TOLERANCE[case.dtype])  # fmt: skip
        row["gb_per_s_calls"], _, row["ceiling_fraction_calls"] = _rates(
            case, direction, median, ceil
        )
        graph, reason = None, "not graph-timed: a host loop of matmuls"
        if case.ceiling == "copy":
            calls.out = None  # the retained forward is rebuilt on the capture's stream
            graph, reason = time_graph(getattr(calls, direction), device, median)
            calls.out = None
        row["graph_reason"] = reason
        if graph is not None:
            row["time_graph_p20_s"], row["time_graph_s"], row["time_graph_p80_s"] = graph
        row["timing"] = "calls" if graph is None else "graph"
        seconds = median if graph is None else graph[1]
        row["gb_per_s"], row["tflop_per_s"], row["ceiling_fraction"] = _rates(
            case, direction, seconds, ceil
        )
        if direction == "fwd_bwd":
            row["peak_mem_bytes"] = peak_memory(calls.fwd_bwd, device)
        rows.append(row)
    return rows


# Launch settings of our RMSNorm timed at the large case: (fwd tile, fwd warps, bwd tile, bwd
# warps, bwd programs per SM); the default (rms_norm.LAUNCH_CONFIG) is the "triton" row.
RMS_NORM_SWEEP = [
    (4096, 8, 4096, 8, 8),
    (4096, 4, 2048, 4, 8),
    (16384, 16, 8192, 16, 2),
    (8192, 16, 4096, 4, 16),
    (8192, 8, 4096, 8, 2),
]
SWEEP_CASES = {("rms_norm", "d1024_large")}


def sweep_impls(case: Case) -> dict[str, Callable[..., Any]]:
    """{label: fn} of the launch settings to sweep at this case (none but at SWEEP_CASES)."""
    if (case.kernel, case.name) not in SWEEP_CASES:
        return {}
    return {
        "f{}w{}_b{}w{}p{}".format(*config): (
            lambda x, w, config=config: rms_norm(x, w, EPS, launch_config=config)
        )
        for config in RMS_NORM_SWEEP
    }


def run_case(case, device, repeats, ceil, compile_reason, liger, liger_reason) -> list[dict]:
    impls: dict[str, Callable | None] = {"eager": case.impls["eager"], "compiled": None,
                                         "triton": case.impls["triton"], "liger": None}  # fmt: skip
    reasons = {"compiled": compile_reason, "liger": liger_reason}
    if compile_reason is None:
        impls["compiled"] = torch.compile(case.impls["eager"], dynamic=False)
    if case.kernel in liger:
        impls["liger"] = liger[case.kernel]
    rows = []
    for impl, fn in impls.items():
        print(f"  {case.kernel} {case.name} {impl}", flush=True)
        if fn is None:
            rows += [
                _row(case, impl, d, status="skipped", reason=reasons[impl]) for d in DIRECTIONS
            ]
            continue
        try:
            rows += measure_impl(case, impl, fn, device, repeats, ceil)
        except Exception as e:  # a failing implementation is a row, not a lost benchmark
            reason = f"{type(e).__name__}: {e}"[:500]
            rows += [_row(case, impl, d, status="error", reason=reason) for d in DIRECTIONS]
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for label, fn in sweep_impls(case).items():
        print(f"  {case.kernel} {case.name} triton_sweep {label}", flush=True)
        try:
            found = measure_impl(case, "triton_sweep", fn, device, repeats, ceil)
        except Exception as e:  # a setting that fails to compile is a row too
            reason = f"{type(e).__name__}: {e}"[:500]
            found = [_row(case, "triton_sweep", d, status="error", reason=reason)
                     for d in DIRECTIONS]  # fmt: skip
        rows += [{**r, "launch_config": label} for r in found]
    return rows


def run(preset: str, device: torch.device, kernels: list[str], compile_: bool, repeats: int,
        hardware: Path | None) -> dict[str, Any]:  # fmt: skip
    if device.type == "cuda" and interpreted():
        raise ValueError("TRITON_INTERPRET is set on a CUDA machine: unset it to time the kernels")
    if compile_:
        for limit in ("cache_size_limit", "recompile_limit"):  # one compile per case and impl
            if hasattr(torch._dynamo.config, limit):
                setattr(torch._dynamo.config, limit, max(64, getattr(torch._dynamo.config, limit)))
        import torch._functorch.config as functorch_config

        # The bwd timing reruns one retained graph (retain_graph=True), which a compiled backward
        # with donated buffers refuses.
        functorch_config.donated_buffer = False
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ceil = ceilings(device, hardware)
    liger, liger_reason = liger_impls() if device.type == "cuda" else ({}, "liger needs CUDA")
    compile_reason = None if compile_ else "torch.compile off (--no-compile; default on the CPU)"
    rows = []
    for kernel in kernels:
        for name, shape in PRESETS[preset][kernel]:
            gen = torch.Generator().manual_seed(0)
            case = BUILDERS[kernel](name, shape, dtype, device, gen)
            rows += run_case(case, device, repeats, ceil, compile_reason, liger, liger_reason)
            del case
    meta = {"preset": preset, "device": device_name(device), "device_type": device.type,
            "triton_interpret": interpreted(), "dtype": str(dtype).removeprefix("torch."),
            "liger": None if liger_reason else _version("liger-kernel"),
            "liger_reason": liger_reason, "packages": package_versions(), **ceil}  # fmt: skip
    return {"meta": meta, "rows": rows}


def _version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def write_outputs(result: dict[str, Any], out: Path) -> None:
    """bench.json, bench.parquet and bench.svg beside `out`, each written atomically.

    The JSON comes first and needs nothing but the standard library; the parquet needs pyarrow and
    the figure Altair. A GPU machine without Altair (the lent ones) skips the figure with a
    warning; `--chart-from bench.json` draws it elsewhere."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_json_atomic(out, result)
    with atomic_path(out.with_suffix(".parquet")) as tmp:
        pq.write_table(pa.Table.from_pylist(result["rows"]), tmp)
    try:
        from nanigpt.plots import save_chart
        from nanigpt.plots.kernels import build_chart
    except ImportError as error:
        print(f"warning: no figure ({error}); draw it with --chart-from {out}", file=sys.stderr)
        return
    save_chart(build_chart(result), out.with_suffix(".svg"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", required=True, type=Path, help="bench.json (or .svg with --chart-from)"
    )
    parser.add_argument("--preset", choices=["auto", "cpu", "gpu"], default="auto",
                        help="shapes: gpu (full) or cpu (small); auto = gpu when CUDA is there")  # fmt: skip
    parser.add_argument("--kernels", nargs="+", choices=list(BUILDERS), default=list(BUILDERS))
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="time torch.compile of the references (default: on with CUDA)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="CPU timing repeats")
    parser.add_argument("--hardware", type=Path, default=None,
                        help="ceilings JSON (default results/hardware/{device}.json)")  # fmt: skip
    parser.add_argument("--chart-from", type=Path, default=None,
                        help="draw --out (.svg) from an existing bench JSON; no timing")  # fmt: skip
    args = parser.parse_args(argv)
    if args.chart_from is not None:
        return chart_from(args.chart_from, args.out)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset = args.preset if args.preset != "auto" else ("gpu" if device.type == "cuda" else "cpu")
    if preset == "gpu" and device.type != "cuda":
        print("error: --preset gpu needs a CUDA device; use --preset cpu", file=sys.stderr)
        return 2
    if args.out.suffix != ".json":
        print(f"error: --out {args.out}: expected a .json path", file=sys.stderr)
        return 2
    compile_ = device.type == "cuda" if args.compile is None else args.compile
    try:
        result = run(preset, device, args.kernels, compile_, args.repeats, args.hardware)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_outputs(result, args.out)
    bad = [r for r in result["rows"] if r["status"] == "ok" and not r["rel_err_ok"]]
    for r in bad:
        print(f"warning: {r['kernel']} {r['case']} {r['impl']} {r['direction']}: rel_err "
              f"{r['rel_err']:.2e} above {TOLERANCE.get(getattr(torch, r['dtype']))}")  # fmt: skip
    print(f"wrote {args.out} (+ .parquet, .svg): {len(result['rows'])} rows")
    return 0


def chart_from(bench: Path, out: Path) -> int:
    from nanigpt.plots import save_from_cli
    from nanigpt.plots.kernels import build_chart

    def build():
        if not bench.exists():
            raise FileNotFoundError(f"bench JSON not found: {bench}")
        result = read_json(bench, what="kernel bench JSON")
        if not isinstance(result, dict) or "rows" not in result or "meta" not in result:
            raise ValueError(f"{bench}: expected a kernel bench JSON with 'meta' and 'rows'")
        return build_chart(result)

    return save_from_cli(build, out)


if __name__ == "__main__":
    sys.exit(main())
