"""The parallelism benchmark's figure: where does each strategy's step time go? (core question 2)

Left: per arch (rows) and strategy, the median step time split into the compute-only share and the
communication the strategy fails to hide (exposed comm). Right: the collectives' time per step,
measured (devices synced around each op), predicted by the alpha-beta model calibrated on the
world group (`nanigpt.parallel.cost_model`), and blocked inside the step. Strategies that failed are
listed under the title. The bench JSON is described in `docs/interfaces.md`.

Drawn from a bench JSON by `python -m nanigpt.bench.parallel --chart-from X.json --out X.svg`.
"""

from __future__ import annotations

from typing import Any


def chart_rows(bench: dict[str, Any]) -> tuple[list[dict], list[dict], list[str]]:
    """(step-time parts, communication times, failures) of a bench JSON, in milliseconds."""
    parts, comm, failed = [], [], []
    for r in bench["results"]:
        if "error" in r:
            failed.append(f"{r['arch']} {r['strategy']}: {r['error'][:80]}")
            continue
        key = {"arch": r["arch"], "strategy": r["strategy"]}
        compute = min(r["compute_only_s"], r["step_time_s"])
        for part, value in (("compute only", compute), ("exposed comm", r["exposed_comm_s"])):
            parts.append({**key, "part": part, "ms": value * 1e3, "mfu": r.get("mfu")})
        for kind, value in (
            ("measured (synced, per op)", r.get("measured_comm_s")),
            ("predicted (alpha-beta)", r.get("predicted_comm_s")),
            ("blocked in step (exposed)", r.get("blocked_comm_s")),
        ):
            if value is not None:
                comm.append({**key, "kind": kind, "ms": value * 1e3})
    return parts, comm, failed


def bench_chart(bench_json: str):
    """Step time split into compute-only and exposed communication per strategy and arch, beside
    the collectives' measured, predicted and blocked times."""
    import altair as alt

    from nanigpt.io import read_json

    bench = read_json(bench_json, what="bench results")
    parts, comm, failed = chart_rows(bench)
    if not parts:
        raise ValueError(f"{bench_json}: no strategy finished ({'; '.join(failed) or 'no rows'})")
    device = next(r["device"] for r in bench["results"] if "error" not in r)
    link = bench.get("link_model") or {}
    steps = (
        alt.Chart(alt.Data(values=parts))
        .mark_bar()
        .encode(
            x=alt.X("sum(ms):Q", title="step time (ms)"),
            y=alt.Y("strategy:N", title=None, sort=None),
            color=alt.Color("part:N", title=None),
            row=alt.Row("arch:N", title=None),
            tooltip=["strategy:N", "part:N", "ms:Q", "mfu:Q"],
        )
        .properties(width=300, height=180, title="step time: compute only + exposed communication")
        .resolve_scale(y="independent")
    )
    collectives = (
        alt.Chart(alt.Data(values=comm))
        .mark_point(filled=True, size=80)
        .encode(
            x=alt.X("ms:Q", title="communication per step (ms)"),
            y=alt.Y("strategy:N", title=None, sort=None),
            color=alt.Color("kind:N", title=None),
            shape=alt.Shape("kind:N", title=None),
            row=alt.Row("arch:N", title=None),
            tooltip=["strategy:N", "kind:N", "ms:Q"],
        )
        .properties(width=300, height=180, title="collectives: measured vs predicted vs blocked")
        .resolve_scale(y="independent")
    )
    subtitle = [
        f"alpha = {link.get('alpha_s', float('nan')) * 1e6:.1f} us, "
        f"beta = {link.get('beta_bytes_per_s', float('nan')) / 1e9:.1f} GB/s ({link.get('source')})"
    ] + [f"failed: {f}" for f in failed]
    chart = alt.hconcat(steps, collectives).resolve_scale(color="independent")
    chart = chart.properties(
        title=alt.TitleParams(
            f"{bench['world_size']} x {device}: where each strategy's step time goes",
            subtitle=subtitle,
            anchor="start",
        )
    )
    return chart
