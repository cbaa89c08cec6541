"""Parallelism strategies: equivalence with one process, exact ledger bytes, early refusals.

The slow tests start `torchrun --standalone` (gloo, CPU) twice: 2 ranks for every 1-D strategy, 4
ranks (tiny models, OMP_NUM_THREADS=1) for the 2-D compositions, each launch running several
strategies (tests/distributed/strategies.py) to pay the start-up once.

Tolerance on the loss trajectory: |loss - reference| <= 1e-5 nats at each of 4 AdamW steps (lr 1e-2,
clipping active). The reference is one process running the same data shards as gradient
accumulation, so the only differences are fp32 summation orders (all_reduce sums, matmuls split
over tp ranks, experts computed in another order): about 1e-7 relative per step, seen here at
<= 5e-7 after 4 steps. 1e-5 leaves a 20x margin, and is 1000x below the loss change per step
(~1e-2), so a wrong reduction (a sum instead of a mean, a missing bucket, a missing 1/ep) fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nanigpt.bench.parallel import DENSE, MOE
from nanigpt.launch import command
from nanigpt.parallel.cost_model import LinkModel, wire_bytes
from nanigpt.parallel.setting import (
    ParallelSetting,
    default_strategy,
    validate_parallelism,
    world_size,
)

ROOT = Path(__file__).resolve().parents[1]
HELPER = ROOT / "tests" / "distributed" / "strategies.py"
TOL = 1e-5

CASES_2 = [
    "dense:ddp_builtin",
    "dense:ddp_manual:bucket=2048",  # small buckets: many all_reduces fired from backward hooks
    "dense:zero1",
    "dense:zero2:bucket=2048",
    "dense:fsdp2",
    # gradient accumulation: no communication until the last micro-batch
    "dense:ddp_builtin:accum=2",
    "dense:ddp_manual:bucket=2048:accum=2",
    "dense:zero2:bucket=2048:accum=2",
    "dense:fsdp2:accum=2",
    "dense:tp_manual",
    "dense:tp_dtensor",
    "moe:ep",
    "moe_cap:ep",
    "moe:tp_manual",
]
CASES_4 = ["dense:fsdp2_tp", "moe:fsdp2_ep", "moe_cap:fsdp2_ep"]


def _launch(nproc: int, cases: list[str], tmp_path: Path, timeout: int) -> dict:
    out = tmp_path / f"strategies_{nproc}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NANIGPT_DEVICE": "cpu", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        str(HELPER), str(out), *cases,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return _launch(2, CASES_2, tmp_path_factory.mktemp("par2"), timeout=240)


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    return _launch(4, CASES_4, tmp_path_factory.mktemp("par4"), timeout=300)


def _check_trajectory(row: dict) -> None:
    assert len(row["losses"]) == len(row["reference"]) == 4
    diffs = [abs(a - b) for a, b in zip(row["losses"], row["reference"], strict=True)]
    assert max(diffs) <= TOL, (
        f"{row['setting']}: loss {row['losses']} vs one process {row['reference']}"
    )
    assert row["losses"][0] != row["losses"][-1]  # the model did train
    # the global gradient norm (clipping is active: it starts near 0.72, the clip is 0.5)
    for a, b in zip(row["grad_norms"], row["reference_grad_norms"], strict=True):
        assert a == pytest.approx(b, rel=1e-5), (
            f"{row['setting']}: grad norm {a} vs one process {b}"
        )


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES_2)
def test_two_rank_strategy_follows_single_process(two_ranks, case):
    _check_trajectory(two_ranks[case])


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES_4)
def test_composition_follows_single_process(four_ranks, case):
    _check_trajectory(four_ranks[case])


@pytest.mark.slow
def test_ddp_all_reduces_exactly_the_gradient_bytes(two_ranks):
    for case in ("dense:ddp_builtin", "dense:ddp_manual:bucket=2048"):
        row = two_ranks[case]
        assert row["bytes"]["all_reduce:grad"] == row["param_bytes"]
        assert set(row["bytes"]) == {"all_reduce:grad"}  # nothing else: replicas need no grad norm
    assert (
        two_ranks["dense:ddp_manual:bucket=2048"]["counts"]["all_reduce:grad"] > 5
    )  # really bucketed


@pytest.mark.slow
def test_zero_moves_padded_parameter_bytes_twice(two_ranks):
    for case in ("dense:zero1", "dense:zero2:bucket=2048"):
        row = two_ranks[case]
        assert row["bytes"]["reduce_scatter:grad"] == row["expected"]["reduce_scatter"]
        assert row["bytes"]["all_gather:param"] == row["expected"]["all_gather"]
        # padding to a multiple of 2 ranks adds at most one element per bucket
        buckets = row["counts"]["reduce_scatter:grad"]
        assert (
            row["param_bytes"]
            <= row["expected"]["reduce_scatter"]
            <= row["param_bytes"] + 4 * buckets
        )
    assert two_ranks["dense:zero2:bucket=2048"]["counts"]["reduce_scatter:grad"] > 5


@pytest.mark.slow
def test_accumulation_communicates_once(two_ranks):
    for case in ("dense:ddp_builtin", "dense:ddp_manual:bucket=2048", "dense:zero2:bucket=2048"):
        assert two_ranks[f"{case}:accum=2"]["bytes"] == two_ranks[case]["bytes"]


@pytest.mark.slow
def test_fsdp2_intercepted_bytes_match_prediction(two_ranks):
    row = two_ranks["dense:fsdp2"]
    assert row["bytes"]["all_gather:intercepted"] == row["expected"]["all_gather"]
    assert row["bytes"]["reduce_scatter:intercepted"] == row["expected"]["reduce_scatter"]


@pytest.mark.slow
def test_tensor_parallel_activation_bytes(two_ranks):
    manual, dtensor = two_ranks["dense:tp_manual"], two_ranks["dense:tp_dtensor"]
    assert manual["bytes"]["all_reduce:activation"] == manual["tp_activation_bytes_expected"]
    assert dtensor["bytes"]["all_reduce:intercepted"] == dtensor["tp_activation_bytes_expected"]
    assert manual["counts"]["all_reduce:activation"] == 4 * DENSE["n_layer"]
    moe = two_ranks["moe:tp_manual"]
    assert moe["bytes"]["all_reduce:activation"] == moe["tp_activation_bytes_expected"]


@pytest.mark.slow
def test_expert_parallel_dispatch_bytes_match_routing(two_ranks, four_ranks):
    for row in (two_ranks["moe:ep"], two_ranks["moe_cap:ep"]):
        sent = row["bytes"]["all_to_all:dispatch"] + row["bytes"]["all_to_all:counts"]
        assert sent == row["ep_dispatch_bytes_expected"]
        assert row["counts"]["all_to_all:dispatch"] == 4  # 2 forward, 2 backward, one MoE layer
    # capacity drops assignments: fewer bytes than dropless on the same data
    assert (
        two_ranks["moe_cap:ep"]["bytes"]["all_to_all:dispatch"]
        <= two_ranks["moe:ep"]["bytes"]["all_to_all:dispatch"]
    )
    row = four_ranks["moe:fsdp2_ep"]
    sent = row["bytes"]["all_to_all:dispatch"] + row["bytes"]["all_to_all:counts"]
    assert sent == row["ep_dispatch_bytes_expected"]
    assert "all_to_all:intercepted" not in row["bytes"]  # wrapped collectives are not counted twice


# --- fast: refusals before any process starts, the cost model, the launcher ---------------------


def test_invalid_settings_refused_with_clear_messages():
    with pytest.raises(ValueError, match=r"dp\*fsdp\*tp\*ep = 4 != world size 2"):
        validate_parallelism({"dp": 2, "fsdp": 2}, DENSE, world_size=2)
    with pytest.raises(ValueError, match=r"tp=3 does not divide model.n_head=4"):
        validate_parallelism({"tp": 3}, DENSE, world_size=3)
    with pytest.raises(ValueError, match=r"ep=3 does not divide the 4 routed experts"):
        validate_parallelism({"ep": 3}, MOE, world_size=3)
    with pytest.raises(ValueError, match=r"ep=2 but the model is dense"):
        validate_parallelism({"ep": 2}, DENSE)
    with pytest.raises(ValueError, match=r"strategy 'ddp_manual' does not use tp=2"):
        validate_parallelism({"tp": 2, "strategy": "ddp_manual"}, DENSE)
    with pytest.raises(ValueError, match=r"parallelism.strategy='zero4'"):
        validate_parallelism({"fsdp": 2, "strategy": "zero4"}, DENSE)
    with pytest.raises(ValueError, match=r"batch_size=6 is not divisible by the 4"):
        validate_parallelism({"dp": 4}, DENSE, batch_size=6)


def test_launcher_refuses_before_starting_and_builds_torchrun():
    run = {"model": DENSE, "parallelism": {"tp": 3}, "training": {"batch_size": 8}}
    with pytest.raises(ValueError, match="tp=3"):
        command(run, ["--run-config", "x.json"])
    run["parallelism"] = {"dp": 1, "fsdp": 1, "tp": 1, "ep": 1}
    assert command(run, ["--a"], python="py") == ["py", "-m", "nanigpt.train", "--a"]
    run["parallelism"] = {"fsdp": 2, "tp": 2}
    assert command(run, ["--a"], python="py") == [
        "py", "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
        "--nproc-per-node", "4", "--max-restarts", "0", "-m", "nanigpt.train", "--a",
    ]  # fmt: skip


def test_one_world_size_formula_for_planner_and_mesh():
    assert world_size({}) == 1 and world_size({"dp": 2, "fsdp": 3, "tp": 2, "ep": 1}) == 12
    setting = {"fsdp": 2, "tp": 2, "strategy": "fsdp2_tp"}
    assert ParallelSetting.from_dict(setting).world_size == world_size(setting) == 4


def test_default_strategies():
    assert default_strategy(dp=2) == "ddp_builtin"
    assert default_strategy(fsdp=2, tp=2) == "fsdp2_tp"
    assert default_strategy(fsdp=2, ep=2) == "fsdp2_ep"
    assert ParallelSetting.from_dict({"dp": 1, "fsdp": 1, "tp": 1, "ep": 1}).strategy == "single"


def test_cost_model_ring_formulas():
    assert wire_bytes("all_reduce", 1000, 4) == 1500  # 2 (n-1)/n
    assert wire_bytes("reduce_scatter", 1000, 4) == 750
    assert wire_bytes("all_gather", 1000, 4) == 750
    assert wire_bytes("all_to_all", 1000, 4) == 750
    assert wire_bytes("all_reduce", 1000, 1) == 0
    link = LinkModel(alpha_s=1e-5, beta_bytes_per_s=1e9)
    assert link.time_s("all_reduce", 10**6, 2) == pytest.approx(2 * 1e-5 + 1e6 / 1e9)


def test_ledger_records_and_reports_predicted_vs_measured(tmp_path):
    import torch
    import torch.distributed as dist

    from nanigpt.parallel.ledger import Ledger

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ledger = Ledger("cpu")
        ledger.all_reduce(torch.ones(10), purpose="grad")
        ledger.all_reduce(torch.ones(6), purpose="grad", async_op=True).wait()
        ledger.end_step()
        link = LinkModel(alpha_s=1e-5, beta_bytes_per_s=1e9)
        metrics = ledger.step_metrics(0, link)
        assert metrics["comm_bytes"] == 64 and metrics["comm_collectives"] == 2
        assert metrics["comm_measured_s"] >= 0 and metrics["comm_predicted_s"] == 0  # one rank
        report = ledger.write_report(tmp_path / "comm.json", link)
        assert json.loads((tmp_path / "comm.json").read_text())["steps"][0]["bytes"] == 64
        assert report["records"][1]["blocked_s"] is not None
    finally:
        dist.destroy_process_group()


def test_alpha_beta_fit_recovers_a_planted_link():
    from nanigpt.parallel.cost_model import fit_alpha_beta, latency_steps

    alpha, beta, n = 25e-6, 320e9, 2
    sizes = [1 << 12, 1 << 16, 1 << 20, 1 << 24, 1 << 28]
    steps = [latency_steps("all_reduce", n)] * len(sizes)
    wire = [wire_bytes("all_reduce", s, n) for s in sizes]
    times = [st * alpha + w / beta for st, w in zip(steps, wire, strict=True)]
    a, inv_b = fit_alpha_beta(steps, wire, times)
    assert a == pytest.approx(alpha, rel=1e-6) and 1 / inv_b == pytest.approx(beta, rel=1e-6)
    # latency-only data (a loaded host: the big message no slower) gives no bandwidth term,
    # never a negative one or an infinite bandwidth
    a, inv_b = fit_alpha_beta(steps[:2], wire[:2], [1e-4, 1e-4])
    assert a > 0 and inv_b == 0
    with pytest.raises(ValueError, match="positive times"):
        fit_alpha_beta(steps[:2], wire[:2], [0.0, 1e-4])


def test_measurement_mode_times_async_ops_without_overlap(tmp_path):
    """With sync timing an async collective is waited for at once: its time is its own duration,
    not the span until the caller's wait() (which would count the backward pass in between)."""
    import time

    import torch
    import torch.distributed as dist

    from nanigpt.parallel.ledger import Ledger

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ledger = Ledger("cpu", sync_timing=True)
        handle = ledger.all_reduce(torch.ones(10), async_op=True)
        time.sleep(0.2)  # "the rest of the backward pass"
        handle.wait()
        ledger.end_step()
        assert ledger.records[0].seconds < 0.1
    finally:
        dist.destroy_process_group()


def test_optimizer_accepts_a_mix_of_dtensor_and_plain_parameters(tmp_path):
    """tp_dtensor leaves norms and embeddings plain: foreach/fused AdamW refuses such a mix."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, distribute_tensor

    from nanigpt.parallel.apply import Parallelized

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
        model[0].weight = torch.nn.Parameter(
            distribute_tensor(model[0].weight, mesh, [Replicate()])
        )
        par = Parallelized(model, ParallelSetting(), None, None)
        opt = par.make_optimizer(lr=1e-2, weight_decay=0.1)
        assert opt.defaults["foreach"] is False and opt.defaults["fused"] is False
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_bench_cli_writes_every_strategy_and_its_chart(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "-m", "nanigpt.bench.parallel", "--out", str(out), "--steps", "4",
        "--strategies", "ddp_manual,zero2,ep",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    bench = json.loads(out.read_text())
    rows = {(r["arch"], r["strategy"]): r for r in bench["results"]}
    assert set(rows) == {("dense", "ddp_manual"), ("dense", "zero2"), ("moe", "ddp_manual"),
                         ("moe", "zero2"), ("moe", "ep")}  # fmt: skip
    link = bench["link_model"]
    assert link["source"].startswith("calibrated:n=2") and len(link["all_reduce_points"]) >= 2
    for r in rows.values():
        assert r["step_time_s"] > 0 and r["exposed_comm_s"] >= 0 and r["comm_bytes"] > 0
        assert r["predicted_comm_s"] > 0 and r["measured_comm_s"] > 0
    # DDP all-reduces exactly the gradient bytes in its recorded step
    ddp = rows[("dense", "ddp_manual")]
    assert ddp["by_op"]["all_reduce:dp:grad"]["bytes"] == ddp["expected_bytes"]["all_reduce"]
    svg = tmp_path / "bench.svg"
    chart = [sys.executable, "-m", "nanigpt.bench.parallel", "--chart-from", str(out), "--out", str(svg)]  # fmt: skip
    subprocess.run(chart, check=True, env=env, cwd=ROOT, timeout=120)
    text = svg.read_text()
    assert "exposed comm" in text and "ddp_manual" in text and "predicted (alpha-beta)" in text


def test_bench_chart_refuses_a_missing_or_broken_file(tmp_path, capsys):
    from nanigpt.bench.parallel import main

    with pytest.raises(SystemExit) as missing:
        main(["--chart-from", str(tmp_path / "none.json"), "--out", str(tmp_path / "x.svg")])
    assert missing.value.code == 2 and "bench results not found" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"results": [{"arch": "dense", "strategy": "zero2"}]}')
    with pytest.raises(SystemExit):
        main(["--chart-from", str(tmp_path / "bad.json"), "--out", str(tmp_path / "x.svg")])
    assert "error:" in capsys.readouterr().err and not (tmp_path / "x.svg").exists()
