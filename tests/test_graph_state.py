"""The graph's bookkeeping: stale Snakemake locks, the planning cache, study versions (fast)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from nanigpt.graph import plancache, snakelock
from nanigpt.graph.config import load_config, resolve_runs
from nanigpt.graph.runtable import UNVERSIONED, study_version, sweeps_labels
from tests.workflow_util import SMOKE_CONFIG


def _locked(workdir, owner: dict | None):
    locks = workdir / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("a\n")
    (locks / "0.output.lock").write_text("b\n")
    if owner is not None:
        owners = workdir / snakelock.OWNERS
        owners.mkdir(parents=True)
        (owners / f"{owner['host']}-{owner['pid']}.json").write_text(json.dumps(owner))
    return locks


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc (Linux)")
def test_locks_of_a_dead_owner_are_removed_and_no_others(tmp_path):
    host = socket.gethostname()
    dead = {"host": host, "pid": _dead_pid(), "start_time": "1"}
    cases = {
        "dead": (dead, True),
        "alive": ({"host": host, "pid": os.getpid(), "start_time": snakelock._start_time(os.getpid())}, False),
        "pid-reused": ({"host": host, "pid": os.getpid(), "start_time": "-1"}, True),
        "other-host": ({**dead, "host": f"{host}-elsewhere"}, False),
        "no-owner": (None, False),
    }  # fmt: skip
    for name, (owner, removed) in cases.items():
        workdir = tmp_path / name
        locks = _locked(workdir, owner)
        cleared = snakelock.clear_stale_locks(workdir)
        assert bool(cleared) == removed, name
        assert (not list(locks.glob("*.lock"))) == removed, name


def test_claim_and_release_record_this_process(tmp_path):
    snakelock.claim(tmp_path)
    [path] = (tmp_path / snakelock.OWNERS).glob("*.json")
    owner = json.loads(path.read_text())
    assert owner["pid"] == os.getpid() and snakelock._alive(owner)
    snakelock.release(tmp_path)
    assert not path.exists()


def test_plan_cache_recomputes_when_the_code_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("NANIGPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(plancache, "_loaded", None)
    monkeypatch.setattr(plancache, "_memo", {})
    code = tmp_path / "counter.py"
    code.write_text("v1")
    monkeypatch.setattr(
        plancache.fingerprint, "loaded_code", lambda: {"m": {"file": str(code), "sha256": plancache.fingerprint.file_sha256(code)}}
    )  # fmt: skip
    calls = []

    def compute():
        calls.append(1)
        return {"n": len(calls)}

    first = plancache.cached("k", "key", compute)
    first["n"] = 99  # a caller changing its copy does not change the cache
    assert plancache.cached("k", "key", compute) == {"n": 1} and len(calls) == 1
    monkeypatch.setattr(plancache, "_loaded", None)  # a new process reads the file
    assert plancache.cached("k", "key", compute) == {"n": 1} and len(calls) == 1
    code.write_text("v2")
    monkeypatch.setattr(plancache, "_memo", {})
    assert plancache.cached("k", "key", compute) == {"n": 2}


def test_planning_a_cached_config_imports_neither_torch_nor_jsonschema(tmp_path):
    env = {**os.environ, "NANIGPT_CACHE_DIR": str(tmp_path)}
    script = (
        "import sys; from nanigpt.graph.config import load_config, resolve_runs;"
        "from nanigpt.graph.plancache import hardware_slug;"
        "resolve_runs(load_config()); hardware_slug('cpu');"
        "print(sorted(m for m in ('torch', 'jsonschema') if m in sys.modules))"
    )
    run = [sys.executable, "-c", script]
    subprocess.run(run, env=env, check=True, capture_output=True)  # fills the cache
    result = subprocess.run(run, env=env, check=True, capture_output=True, text=True)
    assert result.stdout.strip() == "[]"


def test_study_version_is_a_param_only_where_declared():
    config = load_config(SMOKE_CONFIG)
    runs = resolve_runs(config)
    assert study_version(config, runs["tiny_dense_a_t1024_single"]) is UNVERSIONED
    config["sweeps"]["iso"]["version"] = 3
    assert study_version(config, runs["tiny_dense_c_t1024_single"]) == "iso=3"  # iso and scaling
    assert study_version(config, runs["tiny_dense_a_t1024_single"]) is UNVERSIONED
    labels = sweeps_labels(config, ["iso"])
    assert (labels["sweep"], labels["arch"], labels["size"]) == ("iso", "dense", "a,b,c")
