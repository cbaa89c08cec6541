"""Job specs as files (issue 26): a rule names its job's spec file, rewritten only when the job's
settings change, and a job of 500 runs plans and starts, its command line short; lists of input
files go to argument files (`@PATH`), so no planned command is longer than 300 characters."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time

import pytest

from nanigpt.graph import paths
from nanigpt.graph.config import REPO_ROOT, load_config, resolve_runs
from nanigpt.graph.jobs import job_spec, plan_wsd_jobs, run_spec, what_a_job_trains
from nanigpt.graph.specs import args_text, spec_text, write_args, write_spec
from nanigpt.train import run_files
from nanigpt.training.config import RunConfigError, run_settings
from nanigpt.training.jobs import parse_job
from tests.test_train import make_run, write_tiny_data
from tests.workflow_util import snakemake

TOKENS_PER_STEP = 16 * 8  # make_run's seq_len x batch_size


def test_a_spec_is_rewritten_only_when_its_settings_change(tmp_path):
    path = tmp_path / "specs" / "job.json"
    assert write_spec(path, {"b": 1, "a": [1, 2]})
    assert path.read_text() == spec_text({"a": [1, 2], "b": 1})
    os.utime(path, (1, 1))  # a spec written long ago
    assert not write_spec(path, {"a": [1, 2], "b": 1})  # same settings: left alone
    assert path.stat().st_mtime == 1
    assert write_spec(path, {"a": [1, 2], "b": 2}) and path.stat().st_mtime > 1
    assert not list(path.parent.glob(".*"))  # no temporary file left behind


def test_a_wsd_job_of_500_runs_plans_and_starts_from_its_spec_file(tmp_path):
    data = write_tiny_data(tmp_path / "data")
    branches = {}
    for steps in range(10, 510):
        run = make_run(
            tokens=steps * TOKENS_PER_STEP, schedule="wsd", decay_frac=0.2, warmup_steps=2,
            checkpoint_every=0,
        )  # fmt: skip
        run["run_id"] = f"tiny_dense_s0_t{steps}_single_wsd"
        branches[run["run_id"]] = run
    (job,) = plan_wsd_jobs(branches).values()
    assert sum(len(s["branches"]) for s in job["stables"]) == 500
    assert what_a_job_trains(job).startswith("1 size x 500 budgets of dense on tiny, seed 0")
    spec = tmp_path / paths.job_spec(job)
    config = {"tokenizer": {"vocab_size": 512}}
    write_spec(spec, {**job_spec(config, job), "inputs": {k: str(data[k]) for k in ("train", "val")}
                      | {"ground_truth": str(data["gt"])}})  # fmt: skip
    assert parse_job(f"@{spec}")["job_id"] == job["job_id"]
    argv = [sys.executable, "-m", "nanigpt.training.jobs", "train", "--job", f"@{spec}",
            "--out", str(tmp_path / "job")]  # fmt: skip
    assert len(" ".join(argv[1:])) < 300 + len(str(tmp_path)) * 2  # inline JSON was ~400 kB
    assert spec.stat().st_size > 200_000  # what the argv no longer carries
    # Start it: the CLI reads the spec and begins the stable phase; then stop it.
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    started, deadline = False, time.monotonic() + 60
    try:
        for line in proc.stderr:
            if "stable phase to step" in line:
                started = True
                break
            assert time.monotonic() < deadline
    finally:
        proc.kill()
        proc.wait()
    assert started, shlex.join(argv)


def test_an_argument_list_is_rewritten_only_when_it_changes(tmp_path):
    path = tmp_path / "args" / "rule.args"
    assert write_args(path, ["a/summary.json", "b/summary.json"])
    assert path.read_text() == "a/summary.json\nb/summary.json\n"
    os.utime(path, (1, 1))
    assert not write_args(path, ["a/summary.json", "b/summary.json"])
    assert path.stat().st_mtime == 1
    assert write_args(path, ["a/summary.json"]) and path.stat().st_mtime > 1
    with pytest.raises(ValueError, match="one non-empty line per argument"):
        args_text(["two\nlines"])


def test_a_run_spec_names_its_inputs_and_the_trainer_takes_them_out():
    config = load_config(REPO_ROOT / "workflow" / "config" / "default.yaml")
    run = next(iter(resolve_runs(config).values()))
    spec = json.loads(spec_text(run_spec(config, run)))
    inputs = spec["inputs"]
    assert inputs == paths.training_inputs(config, run["dataset"])
    # The command line wins; the spec fills in the rest, and leaves the trainer its settings.
    assert run_files(spec, None, "mine.bin", None) == (
        inputs["train"], "mine.bin", inputs["ground_truth"],
    )  # fmt: skip
    assert spec == json.loads(spec_text(run_settings(run)))
    with pytest.raises(RunConfigError, match="no --train, --val, --ground-truth"):
        run_files({"model": {}}, None, None, None)


def test_no_planned_command_is_longer_than_300_characters(tmp_path):
    """Issue 26: the default config's full plan prints every command, each at most 300 characters
    (settings and lists of files live in results/specs/, written by the plan)."""
    result = snakemake(tmp_path, "-n", "-F", "--printshellcmds", "--cores", "1")
    commands = [
        line.removeprefix("Shell command: ")
        for line in (result.stdout + result.stderr).splitlines()
        if line.startswith("Shell command: ")
    ]
    assert len(commands) > 100, "the plan printed fewer commands than the default graph has"
    longest = max(commands, key=len)
    assert len(longest) <= 300, f"{len(longest)} characters: {longest}"
    # Every file a command reads with `@` was written by the plan, and lists real arguments.
    named = {a[1:] for c in commands for a in shlex.split(c) if a.startswith("@results/specs/")}
    assert {"args", "datasets", "wsd", "jobs"} <= {f.split("/")[2] for f in named}
    for name in named:
        text = (tmp_path / name).read_text()
        assert text.endswith("\n") and "\n\n" not in text, name


def test_every_rule_says_in_words_what_it_does():
    """Issue 26: each rule has a `message:` (Snakemake prints it in place of the rule's name)."""
    silent = []
    for path in [
        REPO_ROOT / "Snakefile",
        *sorted((REPO_ROOT / "workflow" / "rules").glob("*.smk")),
    ]:
        for block in re.split(r"\n(?=rule \w+:)", path.read_text())[1:]:
            rule = re.match(r"rule (\w+):", block).group(1)
            if "\n    message:\n" not in block.split("\n\n\n")[0]:
                silent.append(f"{path.name}:{rule}")
    assert not silent, f"rules without a message: {silent}"


def test_specs_exist_before_snakemake_plans_several_targets(tmp_path):
    """A spec written only by an input function was cached as missing when a dry run named two
    run targets (MissingInputException; the SLURM test's two runs): specs are written while the
    rule files are read."""
    from tests.workflow_util import load_smoke, snakemake, write_config

    config = write_config(tmp_path / "smoke.yaml", load_smoke())
    targets = [paths.run_summary(f"tiny_{arch}_a_t1024_single") for arch in ("dense", "moe")]
    snakemake(tmp_path, "-n", *targets, config=config)
    assert all((tmp_path / paths.run_spec(t.split("/")[2])).exists() for t in targets)
