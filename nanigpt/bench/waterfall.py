"""The throughput waterfall: one optimisation added at a time, each step's gain against its noise.

Serves core question 1 (where does a step's time go?) as a figure: `nanigpt.bench.throughput
--waterfall` measures our GPT at each cumulative step of `STEPS` (baseline, fused projections,
fusable RoPE/norm, the measured attention backend, CUDA graphs, fp8 lm_head, fp8 everywhere) beside
nanoGPT in one call; this module turns its rows into the per-step table and draws it.

A step's gain is tokens/s over the previous step's, minus 1. Its noise is the window spread: for
each of the two rows, (max - min) / median of its timed windows' tokens/s, and the larger of the
two. A gain whose size is within that spread is reported as no gain (`significant: false`), as the
project's contract "a claim carries its noise" asks. MFU is given under both conventions the
harness records (`mfu_palm`, PaLM appendix B as nanoGPT computes it; `mfu_counted`, the project's
count), both against the bf16 peak, also for fp8 steps (their FLOPs are the same matmuls).

    python -m nanigpt.bench.throughput --waterfall --nanogpt-dir .nanogpt \
        --out results/throughput/waterfall.json          # measures, writes JSON (+ SVG if altair)
    python -m nanigpt.bench.throughput --draw results/throughput/waterfall.json   # SVG only
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MEASURED = "measured"  # attention_backend placeholder: the parent's measured choice per shape

# (step, model settings it adds, harness settings it adds); each step keeps the ones before it.
STEPS: tuple[tuple[str, dict[str, Any], dict[str, Any]], ...] = (
    ("baseline", {}, {}),
    ("fused_projections", {"fused_projections": True}, {}),
    ("fusable_rope_norm", {"fusable_rope_norm": True}, {}),
    ("attention_backend", {"attention_backend": MEASURED}, {}),
    ("cuda_graphs", {}, {"cuda_graphs": True}),
    ("fp8_lm_head", {"precision": "fp8_lm_head"}, {}),
    ("fp8", {"precision": "fp8"}, {}),
)
STEP_NAMES = tuple(name for name, _, _ in STEPS)
PREFIX = "wf_"


def impl_name(step: str) -> str:
    return f"{PREFIX}{step}"


def step_of(impl: str) -> str | None:
    """The waterfall step an implementation name stands for, or None (not a waterfall impl)."""
    if impl.startswith(PREFIX) and impl[len(PREFIX) :] in STEP_NAMES:
        return impl[len(PREFIX) :]
    return None


def settings_at(step: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model settings, harness settings) of `step`: its own and every earlier step's."""
    model: dict[str, Any] = {}
    harness: dict[str, Any] = {}
    for name, m, h in STEPS:
        model.update(m)
        harness.update(h)
        if name == step:
            return model, harness
    raise ValueError(f"waterfall step {step!r}: expected one of {list(STEP_NAMES)}")


def needs_fp8(step: str) -> bool:
    return settings_at(step)[0].get("precision", "bf16") != "bf16"


def spread(row: dict[str, Any]) -> float:
    """(max - min) / median of a row's timed windows' tokens/s."""
    samples = row["tokens_per_s_samples"]
    return (max(samples) - min(samples)) / row["tokens_per_s"]


def summarize(rows: list[dict[str, Any]], skipped: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per shape and step: tokens/s, ratio to nanoGPT, gain over the previous measured step with
    its spread and verdict, both MFUs, peak memory and the trace's category shares."""
    out = []
    shapes = sorted({r["shape"] for r in rows} | {s["shape"] for s in skipped})
    for shape in shapes:
        by_impl = {r["impl"]: r for r in rows if r["shape"] == shape}
        nanogpt = by_impl.get("nanogpt")
        previous = None
        for step in STEP_NAMES:
            row = by_impl.get(impl_name(step))
            if row is None:
                why = next(
                    (s["reason"] for s in skipped
                     if s["shape"] == shape and s["impl"] == impl_name(step)),
                    "not measured (failed; see the failures file)",
                )  # fmt: skip
                out.append({"shape": shape, "step": step, "status": "skipped", "reason": why})
                continue
            entry = {
                "shape": shape,
                "step": step,
                "status": "ok",
                "tokens_per_s": row["tokens_per_s"],
                "tokens_per_s_min": min(row["tokens_per_s_samples"]),
                "tokens_per_s_max": max(row["tokens_per_s_samples"]),
                "window_spread": spread(row),
                "vs_nanogpt": row["tokens_per_s"] / nanogpt["tokens_per_s"] if nanogpt else None,
                "mfu_palm": row["mfu_palm"],
                "mfu_counted": row["mfu_counted"],
                "peak_mem_gib": row["peak_mem_gib"],
                "settings": row.get("settings"),
                "wall_share": (row.get("kernel_categories") or {}).get("wall_share"),
            }
            if previous is not None:
                gain = row["tokens_per_s"] / previous["tokens_per_s"] - 1
                noise = max(spread(row), spread(previous))
                entry.update(
                    gain=gain, gain_noise=noise, significant=abs(gain) > noise,
                    gain_over=previous["impl"],
                )  # fmt: skip
            out.append(entry)
            previous = row
        if nanogpt:
            out.append({
                "shape": shape, "step": "nanogpt", "status": "ok",
                "tokens_per_s": nanogpt["tokens_per_s"],
                "tokens_per_s_min": min(nanogpt["tokens_per_s_samples"]),
                "tokens_per_s_max": max(nanogpt["tokens_per_s_samples"]),
                "window_spread": spread(nanogpt), "vs_nanogpt": 1.0,
                "mfu_palm": nanogpt["mfu_palm"], "mfu_counted": nanogpt["mfu_counted"],
                "peak_mem_gib": nanogpt["peak_mem_gib"],
                "wall_share": (nanogpt.get("kernel_categories") or {}).get("wall_share"),
            })  # fmt: skip
    return out


def build_chart(result: dict[str, Any]):
    """Bars of tokens/s per step (window min-max as error bars), nanoGPT as a rule, per shape."""
    import altair as alt
    import polars as pl

    steps = [s for s in result["steps"] if s["status"] == "ok"]
    if not steps:
        raise ValueError("the waterfall has no measured step")
    order = [*STEP_NAMES, "nanogpt"]
    frame = pl.DataFrame(
        [
            {
                "shape": s["shape"],
                "step": s["step"],
                "tokens_per_s": s["tokens_per_s"],
                "lo": s["tokens_per_s_min"],
                "hi": s["tokens_per_s_max"],
                "label": (f"{s['vs_nanogpt']:.2f}x" if s.get("vs_nanogpt") is not None else "")
                + ("" if s.get("significant", True) else " (no gain)"),
                "kind": "nanoGPT" if s["step"] == "nanogpt" else "ours",
            }
            for s in steps
        ]
    )
    x = alt.X("step:N", sort=order, title=None, axis=alt.Axis(labelAngle=-35))
    bars = (
        alt.Chart()
        .mark_bar()
        .encode(
            x=x,
            y=alt.Y("tokens_per_s:Q", title="tokens/s (median of windows)"),
            color=alt.Color("kind:N", title=None),
        )
    )
    errors = alt.Chart().mark_rule().encode(x=x, y="lo:Q", y2="hi:Q")
    text = alt.Chart().mark_text(dy=-8, fontSize=9).encode(x=x, y="hi:Q", text="label:N")
    meta = result.get("meta", {})
    return (
        alt.layer(bars, errors, text, data=frame)
        .properties(width=320, height=220)
        .facet(column=alt.Column("shape:N", title=None))
        .resolve_scale(y="independent")
        .properties(
            title=f"Throughput waterfall on {meta.get('device', '?')}: each step adds one "
            f"optimisation (labels: x nanoGPT; 'no gain': within the window spread)"
        )
    )


def draw(result: dict[str, Any], svg: Path) -> Path:
    from nanigpt.plots import save_chart

    return save_chart(build_chart(result), svg)
