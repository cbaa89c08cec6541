"""Golden per-step losses of one tiny run per strategy family (issue 17's refactor guard).

The trainer, the run config and the parallelism seams were reorganised behind this test: the
per-step training loss, gradient norm, validation loss, auxiliary loss and MoE statistics of each
run below were recorded from the code before that change (tests/golden/per_step.json, floats as
`float.hex`) on one machine's CPU (1 thread, gloo). They are compared within a relative 1e-5
(absolute 1e-7 near zero), not bit for bit: CPU float results are bit-exact on one machine, but
another processor (another SIMD width, another BLAS kernel) moves their last bits (seen: validation
loss `0x1.3f3a12p+1` against the recorded `0x1.3f3a14p+1`, a relative 6e-8). A real change moves a
loss by far more than 1e-5 within 6 steps; tests below hold that the comparison passes a 1e-7
perturbation of the record and fails a 1e-3 change of one loss. Bit-for-bit comparisons stay where
both sides run in one test on one machine (resume, kill, WSD branches, grouped against alone).
Families: one process dense and MoE; DDP (hand-written and torch's), ZeRO-1/2, FSDP2, tensor parallel (hand-written
and DTensor), expert parallel on 2 ranks; FSDP2 x TP and FSDP2 x EP on 4.

To re-record after a change that is meant to change the numbers (never to make this pass):
`NANIGPT_RECORD_GOLDEN=1 uv run pytest tests/test_golden.py`, and say why in the commit.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from nanigpt.train import train
from tests.test_train import SEQ, make_run, write_tiny_data

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "per_step.json"
HELPER = ROOT / "tests" / "distributed" / "golden_runs.py"
STEPS = 6
REL_TOL, ABS_TOL = 1e-5, 1e-7  # float noise across x86-64 CPUs is ~1e-7 relative after 6 steps
COLUMNS = ("loss", "grad_norm", "aux_loss", "val_loss", "moe_dropped_frac", "moe_load_cv")
SIZES = {  # the parallel dims of each strategy at the smallest world that exercises it
    "single": {},
    "ddp_builtin": {"dp": 2},
    "ddp_manual": {"dp": 2},
    "zero1": {"fsdp": 2},
    "zero2": {"fsdp": 2},
    "fsdp2": {"fsdp": 2},
    "tp_manual": {"tp": 2},
    "tp_dtensor": {"tp": 2},
    "ep": {"ep": 2},
    "fsdp2_tp": {"fsdp": 2, "tp": 2},
    "fsdp2_ep": {"fsdp": 2, "ep": 2},
}
CASES_1 = ["dense:single", "moe:single"]
CASES_2 = [
    "dense:ddp_builtin", "dense:ddp_manual", "dense:zero1", "dense:zero2", "dense:fsdp2",
    "dense:tp_manual", "dense:tp_dtensor", "moe:tp_manual", "moe:ep",
]  # fmt: skip
CASES_4 = ["dense:fsdp2_tp", "moe:fsdp2_ep"]


def golden_run(arch: str, strategy: str) -> dict:
    """The tiny run of one case: 6 AdamW steps of 8 rows, eval every 3 steps."""
    run = make_run(tokens=STEPS * 8 * SEQ, eval_every=3)
    run["run_id"] = f"golden_{arch}_{strategy}"
    if arch == "moe":
        run.update(arch="moe", arch_kind="moe")
        run["model"]["moe"] = {"num_experts": 4, "top_k": 1, "capacity_factor": 1.25}
    run["parallelism"] = {"dp": 1, "fsdp": 1, "tp": 1, "ep": 1, **SIZES[strategy]}
    run["parallelism"]["strategy"] = strategy
    return run


def _per_step(out: Path) -> list[dict[str, str | None]]:
    rows = pq.read_table(out / "metrics.parquet").to_pylist()
    assert [r["step"] for r in rows] == list(range(STEPS))
    return [
        {c: None if r[c] is None or math.isnan(r[c]) else float(r[c]).hex() for c in COLUMNS}
        for r in rows
    ]


def _torchrun(nproc: int, data: Path, out: Path, cases: list[str]) -> None:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", str(HELPER), str(data), str(out), *cases,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict[str, list]:
    root = tmp_path_factory.mktemp("golden")
    paths = write_tiny_data(root / "data")
    out = root / "runs"
    for case in CASES_1:
        train(golden_run(*case.split(":")), paths["train"], paths["val"], paths["gt"], out / case)
    _torchrun(2, root / "data", out, CASES_2)
    _torchrun(4, root / "data", out, CASES_4)
    result = {case: _per_step(out / case) for case in CASES_1 + CASES_2 + CASES_4}
    if os.environ.get("NANIGPT_RECORD_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(result, indent=1) + "\n")
    return result


def differences(measured: list[dict], recorded: list[dict]) -> list[str]:
    """Every (step, column) whose value moved beyond float noise, or appeared or vanished."""
    if len(measured) != len(recorded):
        return [f"{len(measured)} steps, {len(recorded)} recorded"]
    out = []
    for step, (now, then) in enumerate(zip(measured, recorded, strict=True)):
        for column in COLUMNS:
            a, b = now[column], then[column]
            if a is None or b is None:
                if a != b:
                    out.append(f"step {step} {column}: {a} (recorded {b})")
                continue
            x, y = float.fromhex(a), float.fromhex(b)
            if not math.isclose(x, y, rel_tol=REL_TOL, abs_tol=ABS_TOL):
                out.append(
                    f"step {step} {column}: {x!r} (recorded {y!r}, relative {abs(x - y) / abs(y):.1e})"
                )
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES_1 + CASES_2 + CASES_4)
def test_per_step_values_equal_the_recorded_ones_within_float_noise(measured, case):
    golden = json.loads(GOLDEN.read_text())
    moved = differences(measured[case], golden[case])
    assert not moved, f"{case}: the per-step values changed: " + "; ".join(moved)


def _scaled(rows: list[dict], factor: float, only: tuple[int, str] | None = None) -> list[dict]:
    """The record with every value (or one step's one column) multiplied by `factor`."""
    out = []
    for step, row in enumerate(rows):
        new = dict(row)
        for column, value in row.items():
            if value is not None and (only is None or only == (step, column)):
                new[column] = (float.fromhex(value) * factor).hex()
        out.append(new)
    return out


def test_the_comparison_passes_float_noise_and_catches_a_real_change():
    """The tolerance is loose enough for another CPU's last bits and tight enough for a change."""
    golden = json.loads(GOLDEN.read_text())
    for case, rows in golden.items():
        assert differences(_scaled(rows, 1 + 1e-7), rows) == [], case
        assert differences(_scaled(rows, 1 - 1e-7), rows) == [], case
        loss = float.fromhex(rows[4]["loss"])
        changed = _scaled(rows, (loss + 1e-3) / loss, only=(4, "loss"))
        assert differences(changed, rows) == [
            f"step 4 loss: {loss + 1e-3!r} (recorded {loss!r}, relative {1e-3 / loss:.1e})"
        ], case


def test_the_golden_runs_trained_and_differ_between_families():
    """The record itself is a real one: losses fall, MoE runs carry MoE statistics, and the
    families are not all one trajectory (a helper that ran the same case twice would show)."""
    golden = json.loads(GOLDEN.read_text())
    assert set(golden) == set(CASES_1 + CASES_2 + CASES_4)
    for case, rows in golden.items():
        losses = [float.fromhex(r["loss"]) for r in rows]
        assert len(rows) == STEPS and losses[-1] < losses[0], case
        assert (rows[0]["moe_load_cv"] is not None) == case.startswith("moe"), case
        assert rows[2]["val_loss"] is not None and rows[5]["val_loss"] is not None, case
    assert golden["dense:single"] != golden["moe:single"]
    assert len({json.dumps(rows) for rows in golden.values()}) > 2
