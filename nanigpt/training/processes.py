"""Process start-up of a run: one process, or one rank of `dp*fsdp*tp*ep` under torchrun.

Serves core question 2 (distributed runs): a worker checks that it was started with as many
processes as its parallelism needs, dies with its launcher, and joins the process group
(`nanigpt.parallel.mesh.init_distributed`); one process just picks its device.
"""

from __future__ import annotations

import os
import sys

import torch

from nanigpt.parallel.setting import ParallelSetting
from nanigpt.training.config import RunConfig, RunConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunConfigError("run config: 'training.device' = 'cuda' but CUDA is not available")
    return torch.device(name)


def die_with_launcher() -> None:
    """Under torchrun, make this worker die with its launcher (Linux `PR_SET_PDEATHSIG`).

    torchrun starts its workers in sessions of their own, so a `kill -9` of the job's process group
    (Snakemake's, a test's) kills torchrun but leaves the ranks training on, writing into the run
    folder while the rerun starts. With this, a dead launcher takes its ranks with it.
    """
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the launcher died before the call above
        os._exit(1)


def start_processes(cfg: RunConfig) -> tuple[ParallelSetting, int, int, torch.device]:
    """(parallel setting, rank, world size, device); starts the process group when distributed."""
    from nanigpt.parallel.mesh import init_distributed

    device = cfg.training.device
    setting = cfg.parallelism
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != setting.world_size:
        raise RunConfigError(
            f"run config: parallelism {setting.as_dict()} needs {setting.world_size} processes, "
            f"but {launched} were started; launch with `python -m nanigpt.launch --nproc "
            f"{setting.world_size} -- nanigpt.train ...`"
        )
    if setting.world_size == 1:
        return setting, 0, 1, resolve_device(device)
    if device != "auto":
        os.environ.setdefault("NANIGPT_DEVICE", device)
    if device == "cuda" and not torch.cuda.is_available():
        raise RunConfigError("run config: 'training.device' = 'cuda' but CUDA is not available")
    die_with_launcher()
    rank, world, device = init_distributed()
    return setting, rank, world, device
