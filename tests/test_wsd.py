"""Tests of WSD cooldown branches (nanigpt.graph.jobs, nanigpt.training.jobs, nanigpt.training.schedule): core question 4's sweeps.

A branch must be the run it stands for (bit-identical on the CPU to a WSD run of its budget trained
straight through), and a killed cooldown must rerun alone (the stable run and the finished
cooldowns are not trained again).
"""

from __future__ import annotations

import copy

import pyarrow.parquet as pq
import pytest
import torch

from nanigpt import train as train_module
from nanigpt.graph.config import load_config, resolve_runs
from nanigpt.graph.jobs import job_of, plan_wsd_jobs
from nanigpt.training import jobs as wsd
from nanigpt.training.schedule import branch_step, lr_at
from tests.test_train import DyingTrainStep, make_run, write_tiny_data

TOKENS_PER_STEP = 16 * 8  # make_run's seq_len x batch_size
BUDGET_STEPS = (10, 20, 30)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_data(tmp_path_factory.mktemp("data"))


def _branch(steps: int) -> dict:
    run = make_run(
        tokens=steps * TOKENS_PER_STEP, schedule="wsd", decay_frac=0.2, warmup_steps=2,
        eval_every=4, checkpoint_every=3,
    )  # fmt: skip
    run["run_id"] = f"tiny_dense_s0_t{steps}_single_wsd"
    return run


def _job() -> dict:
    jobs = plan_wsd_jobs({r["run_id"]: r for r in (_branch(s) for s in BUDGET_STEPS)})
    assert len(jobs) == 1
    return next(iter(jobs.values()))


def _run_job(data, out):
    return wsd.train_job(_job(), data["train"], data["val"], data["gt"], out)


def test_wsd_lr_is_constant_then_decays_and_branches_share_the_stable_phase():
    kw = dict(lr=1.0, min_lr_frac=0.1, warmup_steps=2, decay_frac=0.2)
    for total in BUDGET_STEPS:
        start = branch_step(total, 2, 0.2)
        assert start == total - round(0.2 * total)
        for step in range(start):  # before its branch point every budget sees the stable lr
            assert lr_at(step, total, schedule="wsd", **kw) == lr_at(
                step, 999, schedule="constant", **kw
            )
        assert lr_at(total - 1, total, schedule="wsd", **kw) == pytest.approx(0.1)
    job = _job()
    (stable,) = job["stables"]
    assert stable["run"]["training"]["schedule"] == "constant"
    assert stable["run"]["tokens"] == branch_step(30, 2, 0.2) * TOKENS_PER_STEP


def test_branch_is_bit_identical_to_a_straight_wsd_run(data, tmp_path):
    _run_job(data, tmp_path / "job")
    for steps in (10, 30):  # a mid budget and the one branching at the stable run's last step
        run = _branch(steps)
        train_module.train(
            run, data["train"], data["val"], data["gt"], tmp_path / f"straight{steps}"
        )
        branched = tmp_path / "job" / "runs" / run["run_id"]
        rows_b = pq.read_table(branched / "metrics.parquet").to_pylist()
        rows_s = pq.read_table(tmp_path / f"straight{steps}" / "metrics.parquet").to_pylist()
        assert [r["loss"] for r in rows_b] == [r["loss"] for r in rows_s]
        assert [r["lr"] for r in rows_b] == [r["lr"] for r in rows_s]
        assert rows_b[-1]["val_bpb"] == rows_s[-1]["val_bpb"]
        w_b = torch.load(branched / "model.pt", weights_only=True)
        w_s = torch.load(tmp_path / f"straight{steps}" / "model.pt", weights_only=True)
        assert all(torch.equal(w_b[k], w_s[k]) for k in w_s)


def test_a_killed_cooldown_reruns_alone(data, tmp_path, monkeypatch):
    reference = tmp_path / "ref"
    _run_job(data, reference)
    out = tmp_path / "killed"
    # the stable phase, the 1st cooldown, 2 steps into the 2nd
    dying = DyingTrainStep(monkeypatch, kill_at=branch_step(30, 2, 0.2) + 2 + 2)
    with pytest.raises(KeyboardInterrupt):
        _run_job(data, out)
    monkeypatch.setattr(train_module, "train_step", dying.real)
    assert not (out / "done.json").exists()
    finished = out / "runs" / _branch(10)["run_id"] / "summary.json"
    mtime = finished.stat().st_mtime_ns

    trained = []
    real_train = train_module.train

    def spy(run, *args, **kwargs):
        trained.append((run["run_id"], kwargs.get("branch_from") is not None))
        return real_train(run, *args, **kwargs)

    monkeypatch.setattr(train_module, "train", spy)
    _run_job(data, out)
    assert trained == [(_branch(20)["run_id"], True), (_branch(30)["run_id"], True)]
    assert finished.stat().st_mtime_ns == mtime  # the finished cooldown was not touched
    for steps in BUDGET_STEPS:
        rid = _branch(steps)["run_id"]
        a = pq.read_table(out / "runs" / rid / "metrics.parquet").column("loss").to_pylist()
        b = pq.read_table(reference / "runs" / rid / "metrics.parquet").column("loss").to_pylist()
        assert a == b
    trained.clear()
    _run_job(data, out)  # everything finished: nothing trains
    assert trained == []


def test_publish_links_a_finished_branch_and_refuses_an_unfinished_one(data, tmp_path):
    _run_job(data, tmp_path / "job")
    rid = _branch(20)["run_id"]
    wsd.publish(tmp_path / "job" / "runs" / rid, tmp_path / "runs" / rid)
    for name in wsd.RUN_FILES:
        assert (tmp_path / "runs" / rid / name).read_bytes() == (
            tmp_path / "job" / "runs" / rid / name
        ).read_bytes()
    (tmp_path / "job" / "runs" / rid / "model.pt").unlink()
    assert (
        wsd.main(
            ["publish", "--src", str(tmp_path / "job" / "runs" / rid), "--dst", str(tmp_path / "x")]
        )
        == 2
    )


def test_config_cooldown_sweep_plans_one_stable_run_per_size_and_seed():
    config = copy.deepcopy(load_config())
    config["sweeps"] = {
        "scaling": {
            "dataset": "mix", "archs": ["dense"], "sizes": ["s1", "s2"],
            "tokens": [16384, 32768], "parallelism": ["single"], "seeds": [0, 1], "cooldown": 0.2,
        }
    }  # fmt: skip
    runs = resolve_runs(config)
    assert (
        "mix_dense_s1_t16384_single_wsd" in runs and "mix_dense_s1_t16384_single_seed1_wsd" in runs
    )
    jobs = plan_wsd_jobs(runs)
    assert len(jobs) == 2  # one per seed
    for job in jobs.values():
        assert [len(s["branches"]) for s in job["stables"]] == [2, 2]
    assert set(job_of(jobs)) == set(runs)


@pytest.mark.slow
def test_snakemake_wsd_headline_and_a_killed_cooldown_rerunning_alone(tmp_path):
    """The smoke headline as a WSD sweep through Snakemake: each budget is a target in
    results/runs/, and after a cooldown is lost (its folder, its published run and the job's
    done.json gone, as when the job is killed during it) the rerun trains that cooldown only."""
    from tests.workflow_util import TARGET, load_smoke, snakemake, write_config

    raw = load_smoke()
    raw["sweeps"]["scaling"].update(archs=["dense"], cooldown=0.5, seeds=[0, 1])
    config = write_config(tmp_path / "wsd.yaml", raw)
    snakemake(tmp_path, "--cores", "2", TARGET, config=config)
    runs = pq.read_table(tmp_path / "results/scaling/runs.parquet").to_pylist()
    assert len(runs) == 3 * 3 * 2 and all(r["run_id"].endswith("_wsd") for r in runs)
    assert {r["seed"] for r in runs} == {0, 1}
    job = tmp_path / "results/wsd/scaling_tiny_dense_single_seed1"
    lost = "tiny_dense_b_t2048_single_seed1_wsd"
    import shutil

    # A job killed during this cooldown: its folder unfinished, no done.json, nothing published.
    shutil.rmtree(job / "runs" / lost)
    shutil.rmtree(tmp_path / "results/runs" / lost)
    (job / "done.json").unlink()
    log = tmp_path / "results/logs/train_job/wsd/scaling_tiny_dense_single_seed1.log"
    log.unlink()
    # (the figures downstream exist, so ask for the lost run: a killed first build has neither)
    snakemake(tmp_path, "--cores", "1", f"results/runs/{lost}/summary.json", config=config)
    trained = [line for line in log.read_text().splitlines() if " steps x " in line]
    assert len(trained) == 1 and lost in trained[0], trained
    assert (tmp_path / "results/runs" / lost / "summary.json").is_file()


def test_lr_probe_ids_size_overrides_and_conflicting_run_ids():
    from nanigpt.graph.config import ConfigError

    config = copy.deepcopy(load_config())
    config["sizes"]["s1"].update(lr=0.02, batch_size=8)
    config["sweeps"] = {
        "probe": {
            "dataset": "mix", "archs": ["dense"], "sizes": ["s1"], "tokens": [16384],
            "parallelism": ["single"], "lrs": [0.01, 0.03], "cooldown": 0.2,
        },
        "plain": {
            "dataset": "mix", "archs": ["dense"], "sizes": ["s1"], "tokens": [16384],
            "parallelism": ["single"],
        },
    }  # fmt: skip
    runs = resolve_runs(config)
    probe = runs["mix_dense_s1_t16384_single_lr0p01_wsd"]
    assert probe["training"]["lr"] == 0.01 and probe["training"]["batch_size"] == 8
    assert runs["mix_dense_s1_t16384_single"]["training"]["lr"] == 0.02  # the size's lr
    assert probe["training"]["warmup_steps"] == round(0.05 * 16384 / (64 * 8))
    config["sweeps"]["other"] = {**config["sweeps"]["probe"], "tokens": [8192, 16384]}
    with pytest.raises(ConfigError, match="also declared by sweep 'probe'"):
        resolve_runs(config)  # the same run id, a shorter warmup (its smallest budget is smaller)
