"""The command line of every graph step that also runs outside Snakemake, written once.

Serves questions 1 and 4 on real hardware: the rules (`workflow/rules/*.smk`, each through a `cmd`
param) and `scripts/gpu_session.py` (which replays the graph's GPU work on a machine without
Snakemake) both take a step's argv from here, so the two cannot drift apart. Each function returns
the argv of one `python -m nanigpt....` CLI; `python` names the interpreter ("python" in a rule,
whose shell runs in the uv environment; `sys.executable` on the device machine). The CLIs' options
are in `docs/interfaces.md`. Imports no torch (the Snakefile imports it).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def shell(argv: Sequence[str]) -> str:
    """The argv as one shell-quoted line, for a rule's `shell:`."""
    return shlex.join(str(a) for a in argv)


def dataset_module(spec: Mapping[str, Any]) -> str:
    """The CLI module that builds a dataset of this kind."""
    return "nanigpt.data.realtext" if spec["kind"] == "python_stdlib" else "nanigpt.data.synthetic"


def build_dataset(
    name: str,
    spec: Mapping[str, Any],
    out: str,
    python: str = "python",
    spec_file: str | None = None,
) -> list[str]:
    """Write `out/{train,val}.parquet` and `out/ground_truth.json` of one dataset: its spec from
    `spec_file` (`--spec-json @PATH`, the graph's `paths.dataset_spec`) when given, else inline as
    canonical JSON (sorted keys); `spec` names the CLI either way."""
    spec_arg = f"@{spec_file}" if spec_file is not None else json.dumps(spec, sort_keys=True)
    return [python, "-m", dataset_module(spec), "--name", name, "--spec-json", spec_arg,
            "--out", str(out)]  # fmt: skip


def train_tokenizer(
    text: str, vocab_size: int, impl: str, out: str, python: str = "python"
) -> list[str]:
    """Train the byte-level BPE on a dataset's training text."""
    return [python, "-m", "nanigpt.data.tokenize", "train", "--input", str(text),
            "--vocab-size", str(vocab_size), "--impl", impl, "--out", str(out)]  # fmt: skip


def encode_tokens(
    tokenizer: str, text: str, impl: str, out: str, python: str = "python"
) -> list[str]:
    """Encode one split's text into a token shard."""
    return [python, "-m", "nanigpt.data.tokenize", "encode", "--tokenizer", str(tokenizer),
            "--input", str(text), "--impl", impl, "--out", str(out)]  # fmt: skip


def train_run(
    run_json: str,
    nproc: int,
    train: str | None,
    val: str | None,
    truth: str | None,
    out: str,
    python: str = "python",
) -> list[str]:
    """Train one run through the launcher, as `nproc` processes (`nanigpt.parallel.setting.world_size`).
    `run_json` is the run's JSON or `@PATH` of its spec; the input files left None come from the
    spec's `inputs` (`nanigpt.graph.jobs.run_spec`)."""
    argv = [python, "-m", "nanigpt.launch", "--nproc", str(nproc), "--", "nanigpt.train",
            "--run-config", run_json]  # fmt: skip
    for flag, path in (("--train", train), ("--val", val), ("--ground-truth", truth)):
        if path is not None:
            argv += [flag, str(path)]
    return argv + ["--out", str(out)]


def moe_specialization(
    run_dir: str,
    val: str,
    out: str,
    max_tokens: int,
    counts: str | None = None,
    threads: int | None = None,
    python: str = "python",
) -> list[str]:
    """Score a trained MoE's routing against the sources of the validation text; no `counts`
    Parquet when `counts` is None (a machine without polars), and no `--counts` flag where it is
    the CLI's default (counts.parquet beside `out`)."""
    argv = [python, "-m", "nanigpt.analysis.specialization", "--run-dir", str(run_dir),
            "--val", str(val), "--out", str(out)]  # fmt: skip
    if counts is None:
        argv += ["--no-counts"]
    elif Path(counts) != Path(out).with_name("counts.parquet"):
        argv += ["--counts", str(counts)]
    if threads is not None:
        argv += ["--threads", str(threads)]
    return argv + ["--max-tokens", str(max_tokens)]
