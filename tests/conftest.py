"""Session setup shared by the tests.

Without CUDA, Triton kernels can only run in Triton's interpreter, and the switch must be set before
anything imports triton (tests/test_kernels.py; nanigpt/kernels/__init__.py does the same).
The smoke graph's build is one per session (`smoke_build`).
"""

import os
import time

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def smoke_build(tmp_path_factory):
    """A working directory in which the whole smoke graph (`all`) has been built once, shared by
    the tests that read a built graph (tests/test_workflow.py; tests/test_slurm.py compares its
    SLURM build with it). Read it, never change it: copy it first (test_workflow.copy_build)."""
    from tests.workflow_util import load_smoke, snakemake, write_config

    workdir = tmp_path_factory.mktemp("smoke")
    config = write_config(workdir / "smoke.yaml", load_smoke())
    started = time.monotonic()
    snakemake(workdir, "--cores", "2", "all", config=config)
    print(f"smoke graph built in {time.monotonic() - started:.1f} s")
    return workdir
