"""The GPU path through Snakemake on a machine with torch alone (issue 28): the wheels that
`scripts/device_wheels.sh` carries, with what the device image has and what is left out on
purpose, cover everything Snakemake and the planning layer need, at versions uv.lock pins; and
`rule trained` asks for every run of the config and nothing else (no polars, altair or pulp)."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from nanigpt.graph.config import REPO_ROOT, load_config, resolve_runs

SCRIPT = REPO_ROOT / "scripts" / "device_wheels.sh"
ROOTS = ("snakemake", "jsonschema", "pyyaml")  # what `python3 -m snakemake` on the graph imports


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _bash_array(name: str) -> set[str]:
    text = SCRIPT.read_text()
    match = re.search(rf"^{name}=\((.*?)^\)", text, flags=re.S | re.M)
    assert match, f"{name}=( ... ) not found in {SCRIPT}"
    body = "\n".join(line.split("#")[0] for line in match.group(1).splitlines())
    return {_norm(word) for word in body.split()}


def _requires(dist: str) -> set[str]:
    """A distribution's requirements outside extras, for this platform and Python."""
    from packaging.requirements import Requirement

    names = set()
    for line in metadata.requires(dist) or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.add(_norm(req.name))
    return names


def test_carried_wheels_cover_snakemake_closure():
    carry, has, left = _bash_array("CARRY"), _bash_array("DEVICE_HAS"), _bash_array("LEFT_OUT")
    seen, stack = set(), [_norm(r) for r in ROOTS]
    while stack:
        name = stack.pop()
        if name in seen or name in left:  # what is left out brings none of its needs either
            continue
        seen.add(name)
        stack.extend(_requires(name))
    missing = seen - carry - has
    assert not missing, f"needed on the device, neither carried nor in the image: {missing}"
    assert not (carry & left), carry & left
    assert carry & has == {"typing-extensions"}, "carry only what the image lacks (and one pin)"
    unused = carry - seen - {"nanigpt-rs"}
    assert not unused, f"carried but needed by nothing: {unused}"


def test_carried_names_are_locked():
    locked = {
        _norm(n)
        for n in re.findall(r'^name = "([^"]+)"', (REPO_ROOT / "uv.lock").read_text(), re.M)
    }
    assert _bash_array("CARRY") <= locked


def test_trained_target_is_every_run(tmp_path: Path):
    gpu = load_config(REPO_ROOT / "workflow" / "config" / "smoke_gpu.yaml")
    assert gpu["training"]["device"] == "cuda" and resolve_runs(gpu)
    # Planned on smoke.yaml: a cuda config imports torch to name the GPU (hardware_slug), 5 s here.
    config = REPO_ROOT / "workflow" / "config" / "smoke.yaml"
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "trained", "--configfile", str(config), "-n",
         "--cores", "1", "--scheduler", "greedy", "--quiet", "rules",
         "--directory", str(tmp_path), "--snakefile", str(REPO_ROOT / "Snakefile")],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    )  # fmt: skip
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out.stdout, re.M))
    counts.pop("total")
    assert set(counts) <= {
        "synthetic_data", "train_tokenizer", "encode_tokens", "train_run", "train_job",
        "publish_job_run", "trained",
    }, counts  # fmt: skip
    runs = resolve_runs(load_config(config))
    assert int(counts.get("train_run", 0)) + int(counts.get("publish_job_run", 0)) == len(runs)
