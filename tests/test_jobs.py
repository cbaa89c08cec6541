"""Grouped jobs (nanigpt.graph.jobs plans them, nanigpt.training.jobs trains them): several plain runs trained in one process, bit-identical to each
trained alone, resumable run by run, opted into per sweep with `grouped: true`."""

from __future__ import annotations

import copy

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from nanigpt import train as train_module
from nanigpt.graph.config import DEFAULT_CONFIG_PATH, ConfigError, resolve_runs, validate_config
from nanigpt.graph.jobs import job_of, plan_grouped_jobs, plan_wsd_jobs, stacking_exempt
from nanigpt.io import read_json
from nanigpt.training import jobs
from tests.test_train import DyingTrainStep, make_run, write_tiny_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_data(tmp_path_factory.mktemp("data"))


def _runs() -> list[dict]:
    """A dense run, an MoE run (router state that must not leak) and a dense one of another seed."""
    dense = make_run(tokens=12 * 128, checkpoint_every=3, snapshot_every=4)
    moe = copy.deepcopy(dense)
    moe.update(run_id="tiny_moe_s0_t1k_single", arch="moe", arch_kind="moe")
    moe["model"]["moe"] = {"num_experts": 4, "top_k": 1, "aux_loss_weight": 0.01}
    seed1 = copy.deepcopy(dense)
    seed1.update(run_id="tiny_dense_s0_t1k_single_seed1", seed=1)
    seed1["training"]["seed"] = 1
    return [dense, moe, seed1]


def _job() -> dict:
    return {"kind": "grouped", "job_id": "tiny_s0_single_seed0", "dataset": "tiny", "runs": _runs()}


def _run_job(data, out):
    return jobs.train_job(_job(), data["train"], data["val"], data["gt"], out)


def _rows(folder):
    return pq.read_table(folder / "metrics.parquet").to_pylist()


def test_grouped_runs_are_bit_identical_to_runs_trained_alone(data, tmp_path):
    _run_job(data, tmp_path / "job")
    for run in _runs():
        alone = tmp_path / "alone" / run["run_id"]
        train_module.train(run, data["train"], data["val"], data["gt"], alone)
        grouped = tmp_path / "job" / "runs" / run["run_id"]
        a, b = _rows(grouped), _rows(alone)
        for column in ("loss", "lr", "grad_norm", "val_loss", "val_bpb"):
            assert [r[column] for r in a] == [r[column] for r in b], (run["run_id"], column)
        w_a = torch.load(grouped / "model.pt", weights_only=True)
        w_b = torch.load(alone / "model.pt", weights_only=True)
        assert w_a.keys() == w_b.keys() and all(torch.equal(w_a[k], w_b[k]) for k in w_b)
    # publish links every run file and the snapshots, summary last
    rid = _runs()[1]["run_id"]
    jobs.publish(tmp_path / "job" / "runs" / rid, tmp_path / "runs" / rid)
    for name in jobs.RUN_FILES:
        assert (tmp_path / "runs" / rid / name).samefile(tmp_path / "job" / "runs" / rid / name)
    src_snaps = sorted(p.name for p in (tmp_path / "job" / "runs" / rid / "snapshots").glob("*"))
    assert src_snaps and src_snaps == sorted(
        p.name for p in (tmp_path / "runs" / rid / "snapshots").glob("*")
    )


def test_a_killed_grouped_job_reruns_only_its_unfinished_run_from_its_checkpoint(
    data, tmp_path, monkeypatch
):
    reference = tmp_path / "ref"
    _run_job(data, reference)
    out = tmp_path / "killed"
    # the first run's 12 steps, then 8 of the second (checkpoint after step 6)
    dying = DyingTrainStep(monkeypatch, kill_at=12 + 8)
    with pytest.raises(KeyboardInterrupt):
        _run_job(data, out)
    assert not (out / "done.json").exists()
    first, second, third = (r["run_id"] for r in _runs())
    finished = out / "runs" / first / "summary.json"
    mtime = finished.stat().st_mtime_ns
    assert not (out / "runs" / second / "summary.json").exists()

    trained, dying.calls, dying.kill_at = [], 0, 10**9
    real_train = train_module.train

    def spy(run, *args, **kwargs):
        trained.append((run["run_id"], dying.calls))
        return real_train(run, *args, **kwargs)

    monkeypatch.setattr(train_module, "train", spy)
    _run_job(data, out)
    assert [rid for rid, _ in trained] == [second, third]  # the finished run is skipped
    assert finished.stat().st_mtime_ns == mtime
    steps_of_second = trained[1][1] - trained[0][1]
    assert steps_of_second < 12  # resumed from its checkpoint, not from step 0
    for rid in (first, second, third):
        assert [r["loss"] for r in _rows(out / "runs" / rid)] == [
            r["loss"] for r in _rows(reference / "runs" / rid)
        ]
    assert (out / "done.json").is_file()


def _raw_default() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())


def test_grouped_key_is_validated_with_a_one_line_error():
    raw = _raw_default()
    raw["sweeps"]["moe_experts"]["grouped"] = "yes"
    with pytest.raises(ConfigError) as e:
        validate_config(raw, "cfg.yaml")
    assert "sweeps.moe_experts.grouped" in str(e.value) and "\n" not in str(e.value)
    raw = _raw_default()
    raw["sweeps"]["scaling"]["grouped"] = True
    with pytest.raises(ConfigError, match="'grouped' and 'cooldown' together") as e:
        validate_config(raw, "cfg.yaml")
    assert "\n" not in str(e.value)


def test_default_config_groups_the_moe_sweeps_and_splits_the_isoflop_wsd_jobs_by_size():
    config = validate_config(_raw_default(), "default")
    runs = resolve_runs(config)
    groups = plan_grouped_jobs(config, runs)
    of = job_of(groups)
    assert len(groups) == 8 and len(of) == 24
    assert groups["mix_s1_single_seed0"]["runs"][0]["run_id"] == "mix_dense_s1_t200k_single"
    for rid, jid in of.items():
        assert not rid.endswith("_wsd") and jid.startswith(runs[rid]["dataset"])
        assert "sweeps" not in groups[jid]["runs"][0]  # what train_run gets: settings only
    # a sweep that does not opt in keeps its runs out of the jobs
    config["sweeps"] = {k: {**v, "grouped": False} for k, v in config["sweeps"].items()}
    assert plan_grouped_jobs(config, runs) == {}
    iso = {jid: job for jid, job in plan_wsd_jobs(runs).items() if jid.startswith("iso_dense")}
    assert len(iso) == 5 and all(len(job["stables"]) == 1 for job in iso.values())
    assert all(len(job["stables"][0]["branches"]) == 3 for job in iso.values())


# --- stacked replicas in grouped jobs (training.stack_replicas) -----------------------------------


def _seeds_by_lrs() -> list[dict]:
    """2 seeds x 2 lrs of one shape (10 steps each): one stack of 4 replicas."""
    runs = []
    for seed in (0, 1):
        for lr in (1e-2, 3e-3):
            run = make_run(seed=seed, lr=lr)
            run.update(run_id=f"tiny_dense_s0_t1k_single_seed{seed}_lr{lr:g}", seed=seed)
            runs.append(run)
    return runs


def _grouped(stack: bool) -> dict:
    job = {"kind": "grouped", "job_id": "tiny", "dataset": "tiny", "runs": _seeds_by_lrs()}
    return {**job, "stack": True, "alone": []} if stack else job


def test_a_stacked_grouped_job_ends_as_the_job_trained_run_by_run(data, tmp_path, monkeypatch):
    """Each run of a stacked job (2 seeds x 2 lrs, one stack of 4) ends as the unstacked job's
    run: summary and per-step metrics at rtol 1e-5 (float32; batched matmuls add in another
    order). A rerun after two runs lost their markers stacks those two alone and leaves the
    finished runs' files untouched."""
    torch.set_num_threads(1)
    inputs = (data["train"], data["val"], data["gt"])
    jobs.train_job(_grouped(stack=False), *inputs, tmp_path / "plain")
    jobs.train_job(_grouped(stack=True), *inputs, tmp_path / "stacked")
    ids = [run["run_id"] for run in _seeds_by_lrs()]
    for rid in ids:
        plain, stacked = tmp_path / "plain" / "runs" / rid, tmp_path / "stacked" / "runs" / rid
        assert set(jobs.RUN_FILES) <= {p.name for p in stacked.iterdir()}
        want, got = (read_json(d / "summary.json") for d in (plain, stacked))
        for key in ("final_val_loss", "final_val_bpb", "gap_bpb", "flops_total", "steps"):
            assert got[key] == pytest.approx(want[key], rel=1e-5), (rid, key)
        assert got["stacked"]["replicas"] == 4 and read_json(stacked / "run.json")["stacked"] == ids
        a, b = _rows(stacked), _rows(plain)
        assert [r["step"] for r in a] == [r["step"] for r in b]
        for column in ("loss", "lr", "grad_norm", "val_loss", "val_bpb"):
            got_c = [r[column] for r in a]
            want_c = [r[column] for r in b]
            assert [g is None for g in got_c] == [w is None for w in want_c], (rid, column)
            pairs = [(g, w) for g, w in zip(got_c, want_c, strict=True) if w is not None]
            assert [g for g, _ in pairs] == pytest.approx([w for _, w in pairs], rel=1e-5), (
                rid,
                column,
            )
    # a killed job's rerun: two runs unfinished (no marker) stack again, the others are skipped
    out = tmp_path / "stacked"
    for rid in ids[1:3]:
        (out / "runs" / rid / jobs.MARKER).unlink()
    kept = {rid: (out / "runs" / rid / "summary.json").stat().st_mtime_ns for rid in ids}
    from nanigpt.training import stacked_runs

    stacked_calls, real = [], stacked_runs.train_stacked
    monkeypatch.setattr(
        stacked_runs,
        "train_stacked",
        lambda runs, *a, **k: (
            stacked_calls.append([r["run_id"] for r in runs]) or real(runs, *a, **k)
        ),
    )
    monkeypatch.setattr(train_module, "train", lambda *a, **k: pytest.fail("trained alone"))
    jobs.train_job(_grouped(stack=True), *inputs, out)
    assert stacked_calls == [ids[1:3]]
    for rid in (ids[0], ids[3]):
        assert (out / "runs" / rid / "summary.json").stat().st_mtime_ns == kept[rid]
    assert read_json(out / "runs" / ids[1] / "run.json")["stacked"] == ids[1:3]


def test_stack_replicas_plans_one_job_per_shape_and_changes_no_run():
    """With the switch on, the default config's grouped runs plan one job per (dataset, size,
    arch, parallelism) holding every seed, with the runs whose trace a profile report reads
    kept alone; the runs (ids and settings) are those of the switch off."""
    raw = _raw_default()
    off = validate_config(copy.deepcopy(raw), "default")
    raw["training"]["stack_replicas"] = True
    on = validate_config(raw, "default")
    runs_off, runs_on = resolve_runs(off), resolve_runs(on)
    assert runs_on == runs_off
    plain, stacked = plan_grouped_jobs(off, runs_off), plan_grouped_jobs(on, runs_on)
    assert sorted(job_of(stacked)) == sorted(job_of(plain))  # the same runs, other jobs
    assert all(jid.endswith("_stacked") and job["stack"] for jid, job in stacked.items())
    for job in stacked.values():
        shapes = {(r["dataset"], r["size"], r["arch"], r["parallelism_name"]) for r in job["runs"]}
        assert len(shapes) == 1
    assert any(len({r["seed"] for r in job["runs"]}) > 1 for job in stacked.values())
    alone = {rid for job in stacked.values() for rid in job["alone"]}
    assert alone == set(job_of(stacked)) & stacking_exempt(on)
    # validated: a boolean, and only where a sweep is grouped
    raw["training"]["stack_replicas"] = "yes"
    with pytest.raises(ConfigError, match="stack_replicas"):
        validate_config(copy.deepcopy(raw), "cfg.yaml")
    raw["training"]["stack_replicas"] = True
    raw["sweeps"] = {k: {**v, "grouped": False} for k, v in raw["sweeps"].items()}
    with pytest.raises(ConfigError, match="no sweep has 'grouped: true'") as e:
        validate_config(raw, "cfg.yaml")
    assert "\n" not in str(e.value)
