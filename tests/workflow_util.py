"""Helpers for tests that drive the Snakemake graph in a scratch folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SMOKE_CONFIG = REPO / "workflow" / "config" / "smoke.yaml"
TARGET = "results/scaling/moe_vs_dense.svg"


def snakemake_env() -> dict:
    env = dict(os.environ)
    # Rules call `python -m nanigpt...`: make that the interpreter running the tests.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def snakemake(workdir: Path, *args: str, config: Path | None = None, check: bool = True):
    """Run snakemake on the repo's Snakefile with `workdir` as its working directory."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    if config is not None:
        cmd += ["--configfile", str(config)]
    cmd += list(args)
    result = subprocess.run(cmd, capture_output=True, text=True, env=snakemake_env(), cwd=workdir)
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def planned_jobs(workdir: Path, config: Path, target: str = TARGET) -> list[tuple[str, str]]:
    """The (rule, wildcards) pairs of the jobs that running `target` would execute, wildcards
    as "name: value" lines (those the job does not share with its inputs' jobs).

    Read from the DAG Snakemake would run (`--dag dot`; a job that needs no run is drawn dashed),
    not from a dry run's text, where a rule with a `message:` prints the message instead of its
    name and outputs."""
    result = snakemake(
        workdir, "--dag", "dot", "--rerun-incomplete", "--cores", "1", target, config=config
    )
    jobs = []
    for label, style in re.findall(r'\[label = "([^"]*)".*?style="([^"]*)"', result.stdout):
        if "dashed" not in style:
            rule, _, wildcards = label.partition("\\n")
            jobs.append((rule, wildcards.replace("\\n", "\n")))
    return [job for job in jobs if job[0] != "all"]


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def load_smoke() -> dict:
    return yaml.safe_load(SMOKE_CONFIG.read_text())
