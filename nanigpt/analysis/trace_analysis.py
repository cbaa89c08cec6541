"""Trace analysis: where does the time of a profiled training step go? (project question 1)

Reads the Chrome trace a run's profiler window wrote (`results/runs/RUN/trace.json.gz`,
`nanigpt.measure.trace`) and sorts its time into categories:

| category           | what falls in it (name patterns, case-insensitive)                           |
| ------------------ | ---------------------------------------------------------------------------- |
| `communication`    | nccl, gloo, c10d, all_reduce, all_gather, reduce_scatter, all_to_all, ...    |
| `attention`        | flash, fmha, sdpa, scaled_dot_product, cudnn mha, efficient_attention        |
| `matmul`           | gemm, cutlass, sm90_xmma, nvjet, cublas, aten::mm / addmm / bmm / linear     |
| `memory_copy`      | Memcpy, Memset, copy_ / _to_copy / clone (and GPU direct_copy kernels)       |
| `norm_elementwise` | rms_norm, softmax, vectorized/unrolled elementwise, reduce, triton fused,    |
|                    | optimizer foreach / multi_tensor_apply, loss, embedding, index ops           |
| `other`            | anything else (on the CPU: views, allocations, autograd bookkeeping)         |
| `idle`             | time inside the active window covered by no kernel (GPU: launch gaps, host   |
|                    | stalls; CPU: Python between ops)                                             |

The patterns are tried in the order of the table (communication first, so `reduce_scatter` is not
an elementwise `reduce`; attention before matmul, so `fmha_cutlass...` is attention).

Two kinds of trace:
- **GPU** (any event of category `kernel`, `gpu_memcpy` or `gpu_memset`): each device event is one
  segment on its stream. The active window runs from the first device event to the last.
- **CPU fallback** (no device events): the ops of category `cpu_op`. Ops nest (`aten::linear` calls
  `aten::mm`), so each op contributes its *self* time (its span minus its children's), categorised by
  its own name, or by its nearest categorised ancestor when its own name matches nothing (an
  `aten::empty` inside `aten::rms_norm` is norm time). The window is the union of the
  `ProfilerStep#N` annotations.

A profiled step that takes more than twice the median profiled step (3 steps or more) is left out of
the window by default and named in `dropped_steps`: it is a checkpoint, a validation or a
compilation that fell inside the profiler window, not a training step (seen on an H100: a
checkpoint save inside the window made one step 3.5 s against 60 ms, 96% of it "idle"). On the
GPU the kept steps' windows are the `ProfilerStep#N` spans projected onto the device timeline.

Two sums per category: `kernel_time_s`, the summed durations (what the kernels cost, whichever
stream ran them), and `wall_time_s`, a partition of the window: where streams overlap, the instant
goes to the highest-priority category running (matmul, attention, norm_elementwise, other,
memory_copy, communication), so communication's wall time is its *exposed* part and the wall times
plus `idle` sum to the window exactly. Communication/compute overlap = time where a communication
kernel runs while a compute kernel (matmul, attention, norm_elementwise, other) runs / total
communication time (the union of communication segments); null when there is no communication.

Why our own parser and not HolisticTraceAnalysis (HTA, facebookresearch)? HTA does temporal and
kernel breakdowns and comm/compute overlap well, but it is not installed here, pulls in pandas and
plotly, expects one trace per rank in a folder with GPU kernels (it has nothing to say about the
CPU-only traces every CI run and every default-config run produces), and its categories (compute,
communication, memory) are coarser than the six the project asks for. The part we need is a
hundred-odd lines of interval arithmetic over a JSON list, easy to test exactly on a synthetic trace
(`tests/test_trace_analysis.py`). If a study ever needs HTA's critical path or queue-length
analyses, it reads the same `trace.json.gz`.

    python -m nanigpt.analysis.trace_analysis --trace results/runs/RUN/trace.json.gz \\
        --out results/profile/RUN/trace_breakdown.parquet   # + trace_breakdown.json beside it

`--impl rust` (the default) runs the same analysis in Rust (`rust/src/trace.rs`, streaming the
gzip JSON); `--impl python` runs this module, the reference the Rust port is tested against.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from nanigpt.io import atomic_path, write_json_atomic

CATEGORIES = (
    "matmul",
    "attention",
    "norm_elementwise",
    "communication",
    "memory_copy",
    "other",
)
COMPUTE = frozenset({"matmul", "attention", "norm_elementwise", "other"})
IDLE = "idle"
# Wall-time priority where segments overlap: compute first, then copies, then communication.
WALL_PRIORITY = ("matmul", "attention", "norm_elementwise", "other", "memory_copy", "communication")
DEVICE_CATS = frozenset({"kernel", "gpu_memcpy", "gpu_memset"})
OUTLIER_FACTOR = 2.0  # a profiled step this many times the median one is left out by default

PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "communication",
        re.compile(
            r"nccl|gloo|c10d|all_?reduce|all_?gather|reduce_?scatter|all_?to_?all|broadcast"
            r"|record_param_comms|sendrecv"
        ),
    ),
    (
        "attention",
        re.compile(
            r"flash|fmha|sdpa|scaled_?dot_?product|efficient_attention|cudnn_attention"
            r"|attention|(^|[^a-z])mha|cudnn::fusion|dot_do_o|convert_dq"
        ),
    ),
    (
        "matmul",
        re.compile(
            r"gemm|cutlass|xmma|nvjet|cublas|wgmma|matmul|grouped_mm"
            r"|(^|[^a-z])(mm|addmm|bmm|baddbmm|linear)([^a-z]|$)"
            r"|(^|[^a-z])(mm|bmm|addmm)backward|triton_tem_fused_.*mm"
        ),
    ),
    ("memory_copy", re.compile(r"memcpy|memset|copy|clone|contiguous")),
    (
        "norm_elementwise",
        re.compile(
            r"norm|softmax|elementwise|reduce|triton|silu|gelu|relu|sigmoid|tanh|sqrt|pow|exp"
            r"|log|add|mul|sub|div|neg|sum|mean|max|min|clamp|lerp|foreach|adam|multi_tensor"
            r"|cross_entropy|nll_loss|embedding|index|scatter|gather|topk|sort|cumsum|where"
            r"|fill|zero|cat|stack|square|abs|(^|[^a-z])(eq|ne|lt|gt|le|ge)([^a-z]|$)|masked"
            r"|bincount|nonzero|rotary|moments|gammabeta|arange|rand|dropout|rsub|reciprocal"
        ),
    ),
)


_INDUCTOR_FUSED = re.compile(r"^triton_(poi|red|per)_fused_+(.*?)_*\d*$")
_LAYOUT_ONLY = re.compile(r"^(to|copy|clone|view|unsafe|expand|permute|transpose|t|contiguous)$")


def categorize(name: str) -> str | None:
    """The category of a kernel or op name, or None when no pattern matches."""
    lowered = name.lower()
    fused = _INDUCTOR_FUSED.match(lowered)
    if fused:
        # An Inductor kernel is named after the ops it fuses ("..._log_softmax__to_copy_..."): it
        # is a copy only when every fused op is a cast or a layout change, else it is compute.
        ops = [op for op in fused.group(2).split("_") if op and not op.isdigit()]
        if ops and all(_LAYOUT_ONLY.match(op) for op in ops):
            return "memory_copy"
        return "norm_elementwise"
    for category, pattern in PATTERNS:
        if pattern.search(lowered):
            return category
    return None


@dataclass(frozen=True)
class Segment:
    """A stretch of time one category spent on one stream (GPU) or thread (CPU), in microseconds."""

    start: float
    end: float
    category: str
    name: str
    lane: str  # "pid/tid": a stream on the GPU, a thread on the CPU


# ---------------------------------------------------------------------------------------------
# Interval arithmetic (microseconds)


def union(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted, merged, non-empty intervals."""
    merged: list[list[float]] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def length(intervals: Iterable[tuple[float, float]]) -> float:
    return sum(b - a for a, b in intervals)


def intersect(
    a: list[tuple[float, float]], b: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """Intersection of two merged interval lists."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if end > start:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def clip(start: float, end: float, window: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return intersect([(start, end)], window)


# ---------------------------------------------------------------------------------------------
# Reading a trace


def load_trace(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"trace not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as f:
            trace = json.load(f)
    except (OSError, json.JSONDecodeError, EOFError) as e:
        raise ValueError(f"{path}: not a readable Chrome trace ({e})") from e
    if isinstance(trace, list):  # the bare-array form of the Chrome trace format
        trace = {"traceEvents": trace}
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        raise ValueError(f"{path}: expected a JSON object with a 'traceEvents' list")
    return trace


def _complete_events(trace: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        e
        for e in trace["traceEvents"]
        if isinstance(e, dict) and e.get("ph") == "X" and "ts" in e and "dur" in e
    ]


def _lane(event: dict[str, Any]) -> str:
    return f"{event.get('pid')}/{event.get('tid')}"


def profiler_steps(
    events: list[dict[str, Any]], cat: str = "user_annotation"
) -> dict[str, tuple[float, float]]:
    """Spans of the `ProfilerStep#N` annotations by name: on the host (`user_annotation`) or,
    with `cat="gpu_user_annotation"`, their projection onto the device timeline."""
    return {
        str(e["name"]): (float(e["ts"]), float(e["ts"]) + float(e["dur"]))
        for e in events
        if e.get("cat") == cat and str(e.get("name", "")).startswith("ProfilerStep#")
    }


def outlier_steps(
    steps: dict[str, tuple[float, float]], factor: float = OUTLIER_FACTOR
) -> list[str]:
    """Profiled steps longer than `factor` x the median one (with 3 steps or more): a checkpoint,
    a validation or a compilation that fell inside the window, not a training step."""
    if len(steps) < 3:
        return []
    durations = {name: end - start for name, (start, end) in steps.items()}
    median = statistics.median(durations.values())
    return sorted(name for name, d in durations.items() if d > factor * median)


def gpu_segments(events: list[dict[str, Any]]) -> list[Segment]:
    segments = []
    for e in events:
        if e.get("cat") not in DEVICE_CATS:
            continue
        name = str(e.get("name", ""))
        category = "memory_copy" if e["cat"] != "kernel" else (categorize(name) or "other")
        start = float(e["ts"])
        segments.append(Segment(start, start + float(e["dur"]), category, name, _lane(e)))
    return segments


def cpu_segments(events: list[dict[str, Any]]) -> list[Segment]:
    """Self-time segments of nested CPU ops, per thread, categorised by name or ancestor."""
    by_lane: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "cpu_op":
            by_lane[_lane(e)].append(e)
    segments: list[Segment] = []
    for lane, ops in by_lane.items():
        ops.sort(key=lambda e: (float(e["ts"]), -float(e["dur"])))
        # stack entries: [start, end, category or None, name, children intervals]
        stack: list[list[Any]] = []

        def close(entry: list[Any], lane: str = lane) -> None:
            start, end, category, name, children = entry
            for a, b in _complement(union(children), start, end):
                segments.append(Segment(a, b, category or "other", name, lane))

        for e in ops:
            start, end = float(e["ts"]), float(e["ts"]) + float(e["dur"])
            while stack and start >= stack[-1][1]:
                close(stack.pop())
            name = str(e.get("name", ""))
            category = categorize(name)
            if category is None and stack:
                category = stack[-1][2]
            if stack:
                end = min(end, stack[-1][1])  # a child never outlives its parent
                stack[-1][4].append((start, end))
            stack.append([start, end, category, name, []])
        while stack:
            close(stack.pop())
    return segments


def _complement(
    intervals: list[tuple[float, float]], start: float, end: float
) -> list[tuple[float, float]]:
    out, cursor = [], start
    for a, b in intervals:
        if a > cursor:
            out.append((cursor, min(a, end)))
        cursor = max(cursor, b)
    if cursor < end:
        out.append((cursor, end))
    return [(a, b) for a, b in out if b > a]


# ---------------------------------------------------------------------------------------------
# The analysis


@dataclass
class TraceBreakdown:
    mode: str  # "gpu" | "cpu" | "empty"
    steps: int  # profiled steps in the trace (ProfilerStep annotations)
    window_s: float
    kernel_time_s: dict[str, float]
    wall_time_s: dict[str, float]  # includes "idle"; sums to window_s
    counts: dict[str, int]
    top_names: dict[str, list[tuple[str, float]]]  # per category, the 5 names with most time
    comm_time_s: float
    comm_overlap_s: float
    comm_overlap_frac: float | None
    step_durations_s: dict[str, float] = field(default_factory=dict)  # host time per profiled step
    dropped_steps: list[str] = field(default_factory=list)  # outliers left out of the window

    def rows(self) -> list[dict[str, Any]]:
        """One row per category (and idle), the table `breakdown.parquet` holds."""
        rows = []
        steps = max(self.steps, 1)
        for category in (*CATEGORIES, IDLE):
            wall = self.wall_time_s.get(category, 0.0)
            rows.append(
                {
                    "category": category,
                    "kernel_time_s": self.kernel_time_s.get(
                        category, wall if category == IDLE else 0.0
                    ),
                    "wall_time_s": wall,
                    "wall_share": wall / self.window_s if self.window_s > 0 else None,
                    "wall_time_per_step_s": wall / steps,
                    "count": self.counts.get(category, 0),
                    "mode": self.mode,
                }
            )
        return rows

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "steps": self.steps,
            "window_s": self.window_s,
            "kernel_time_s": self.kernel_time_s,
            "wall_time_s": self.wall_time_s,
            "wall_share": {
                k: (v / self.window_s if self.window_s > 0 else None)
                for k, v in self.wall_time_s.items()
            },
            "counts": self.counts,
            "top_names": {k: [[n, t] for n, t in v] for k, v in self.top_names.items()},
            "comm_time_s": self.comm_time_s,
            "comm_overlap_s": self.comm_overlap_s,
            "comm_overlap_frac": self.comm_overlap_frac,
            "step_durations_s": self.step_durations_s,
            "dropped_steps": self.dropped_steps,
        }


def _wall_partition(segments: list[Segment], window: list[tuple[float, float]]) -> dict[str, float]:
    """Split the window among categories by WALL_PRIORITY; what nothing covers is idle."""
    wall: dict[str, float] = {}
    remaining = window
    for category in WALL_PRIORITY:
        covered = union((s.start, s.end) for s in segments if s.category == category)
        taken = intersect(remaining, covered)
        wall[category] = length(taken) / 1e6
        remaining = intersect(remaining, _complement(taken, window[0][0], window[-1][1]))
    wall[IDLE] = length(remaining) / 1e6
    return wall


def analyze(trace: dict[str, Any], drop_outliers: bool = True) -> TraceBreakdown:
    """Categorise the device kernels of a trace (or its CPU ops when there are none).

    With `drop_outliers`, profiled steps longer than OUTLIER_FACTOR x the median step (see
    `outlier_steps`) are left out of the window and listed in `dropped_steps`.
    """
    events = _complete_events(trace)
    host_steps = profiler_steps(events)
    dropped = outlier_steps(host_steps) if drop_outliers else []
    kept = [name for name in host_steps if name not in dropped]
    segments = gpu_segments(events)
    mode = "gpu"
    if segments:
        device_steps = profiler_steps(events, "gpu_user_annotation")
        if dropped and all(name in device_steps for name in kept):
            window = union(device_steps[name] for name in kept)
        else:
            dropped = []
            kept = list(host_steps)
            window = [(min(s.start for s in segments), max(s.end for s in segments))]
    else:
        mode = "cpu"
        segments = cpu_segments(events)
        window = union(host_steps[name] for name in kept) or union(
            [(min(s.start for s in segments), max(s.end for s in segments))] if segments else []
        )
    durations = {name: (end - start) / 1e6 for name, (start, end) in host_steps.items()}
    if not segments or not window:
        zeros = dict.fromkeys(CATEGORIES, 0.0)
        return TraceBreakdown(
            "empty", len(kept), 0.0, zeros, {**zeros, IDLE: 0.0}, {}, {}, 0.0, 0.0, None
        )
    clipped: list[Segment] = []
    for s in segments:
        for a, b in clip(s.start, s.end, window):
            clipped.append(Segment(a, b, s.category, s.name, s.lane))
    kernel_time = dict.fromkeys(CATEGORIES, 0.0)
    counts = dict.fromkeys(CATEGORIES, 0)
    by_name: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for s in clipped:
        kernel_time[s.category] += (s.end - s.start) / 1e6
        counts[s.category] += 1
        by_name[s.category][s.name] += (s.end - s.start) / 1e6
    top = {c: sorted(names.items(), key=lambda kv: -kv[1])[:5] for c, names in by_name.items()}
    comm = union((s.start, s.end) for s in clipped if s.category == "communication")
    compute = union((s.start, s.end) for s in clipped if s.category in COMPUTE)
    comm_time = length(comm) / 1e6
    overlap = length(intersect(comm, compute)) / 1e6
    return TraceBreakdown(
        mode=mode,
        steps=len(kept),
        window_s=length(window) / 1e6,
        kernel_time_s=kernel_time,
        wall_time_s=_wall_partition(clipped, window),
        counts=counts,
        top_names=top,
        comm_time_s=comm_time,
        comm_overlap_s=overlap,
        comm_overlap_frac=overlap / comm_time if comm_time > 0 else None,
        step_durations_s=durations,
        dropped_steps=dropped,
    )


IMPLS = ("rust", "python")


def analyze_path(
    path: str | Path, drop_outliers: bool = True, impl: str = "rust"
) -> TraceBreakdown:
    """`analyze(load_trace(path))`, by this module (`impl="python"`, the reference) or by the Rust
    port (`nanigpt_rs.trace_breakdown`: streams the gzip JSON, same table; tested equal)."""
    if impl == "python":
        return analyze(load_trace(path), drop_outliers=drop_outliers)
    if impl != "rust":
        raise ValueError(f"trace analysis impl {impl!r}: expected one of {IMPLS}")
    import nanigpt_rs

    if not Path(path).exists():
        raise FileNotFoundError(f"trace not found: {path}")
    fields = json.loads(nanigpt_rs.trace_breakdown(str(path), drop_outliers))
    fields["top_names"] = {c: [tuple(p) for p in v] for c, v in fields["top_names"].items()}
    return TraceBreakdown(**fields)


def write_breakdown(result: TraceBreakdown, out: str | Path) -> tuple[Path, Path]:
    """`out` (parquet, one row per category) and the JSON summary beside it (same stem)."""
    out = Path(out)
    table = pa.Table.from_pylist(result.rows())
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    summary_path = out.with_suffix(".json")
    write_json_atomic(summary_path, result.summary())
    return out, summary_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.analysis.trace_analysis",
        description="Sort a profiler trace's kernel (or CPU op) time into categories.",
    )
    parser.add_argument("--trace", required=True, help="trace.json.gz of a run")
    parser.add_argument("--out", required=True, help="parquet to write (+ .json summary beside)")
    parser.add_argument(
        "--keep-outlier-steps",
        action="store_true",
        help=f"keep profiled steps longer than {OUTLIER_FACTOR}x the median (default: left out)",
    )
    parser.add_argument(
        "--impl", choices=IMPLS, default="rust", help="rust (default) or the Python reference"
    )
    args = parser.parse_args(argv)
    try:
        result = analyze_path(args.trace, not args.keep_outlier_steps, impl=args.impl)
    except (FileNotFoundError, ValueError) as e:
        print(f"nanigpt.analysis.trace_analysis: error: {e}", file=sys.stderr)
        return 2
    out, summary = write_breakdown(result, args.out)
    shares = ", ".join(
        f"{row['category']} {row['wall_share']:.1%}"
        for row in result.rows()
        if row["wall_share"] is not None
    )
    print(
        f"{args.trace}: {result.mode} trace, {result.steps} steps, {result.window_s * 1e3:.2f} ms: {shares}"
    )
    if result.dropped_steps:
        print(
            f"left out outlier steps {result.dropped_steps} (host times {result.step_durations_s})"
        )
    print(f"wrote {out} and {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
