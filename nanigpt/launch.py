"""Start a module as N processes: directly, with torchrun on this machine, or across a SLURM job.

`python -m nanigpt.launch --nproc N -- <module> <args...>` is the one way the graph starts a
(possibly distributed) program, so a run behaves the same locally and on a cluster:

- N = 1: the module runs in this process (no torchrun, no process group needed).
- N > 1 outside SLURM, or inside a SLURM job whose allocation is one task on one node:
  `torchrun --standalone --nproc-per-node N -m <module> ...` on this machine.
- N > 1 inside a SLURM job whose allocation has more than one task or node: one torchrun per node
  started by `srun --ntasks-per-node 1`, all meeting at a c10d rendezvous on the allocation's first
  node (`scontrol show hostnames $SLURM_JOB_NODELIST | head -1`) and a port (from
  $NANIGPT_RDZV_PORT or $MASTER_PORT, else a free port when this is the first node, else one derived
  from the job id). Each torchrun starts N / nodes workers, which read RANK, LOCAL_RANK, WORLD_SIZE,
  MASTER_ADDR and MASTER_PORT as usual.

The allocation is read from the SLURM environment ($SLURM_JOB_NUM_NODES or $SLURM_NNODES,
$SLURM_NTASKS, $SLURM_JOB_NODELIST, $SLURM_CPUS_ON_NODE) and, where a job step hides it (Snakemake's jobstep executor runs each rule
under `srun -n1` and clears the job's SLURM variables), from `scontrol show job $SLURM_JOB_ID`.
Nothing here knows about Snakemake or the trainer: any module with a `__main__` works.

How many processes a run needs is the parallel setting's to say
(`nanigpt.parallel.setting.world_size`); `command` asks it, and validates the setting against the
model first. This module imports no torch.
"""

from __future__ import annotations

import argparse
import os
import runpy
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nanigpt.parallel.setting import validate_parallelism, world_size

# SLURM variables that name the job itself; every other SLURM_* variable describes the step we run
# in and must not leak into a nested srun as defaults.
SLURM_IDENTITY = {
    "SLURM_JOB_ID",
    "SLURM_JOBID",
    "SLURM_CLUSTER_NAME",
    "SLURM_CONF",
    "SLURM_SUBMIT_DIR",
    "SLURM_SUBMIT_HOST",
}


class LaunchError(RuntimeError):
    """A launch that cannot work as asked; the message says why and what to change."""


@dataclass(frozen=True)
class Allocation:
    """The part of a SLURM job's allocation that placing processes needs."""

    job_id: str
    nodes: list[str]
    ntasks: int
    cpus: int
    in_step: bool

    @property
    def nnodes(self) -> int:
        return len(self.nodes)


def torchrun_command(
    nproc: int,
    nnodes: int,
    module_args: Sequence[str],
    *,
    rdzv_endpoint: str | None = None,
    rdzv_id: str = "nanigpt",
    python: str = sys.executable,
) -> list[str]:
    """The torchrun command that starts `nproc` processes in all over `nnodes` nodes.

    With one node and no rendezvous endpoint, a standalone (single-machine) rendezvous is used;
    otherwise every node's torchrun meets at the c10d rendezvous `rdzv_endpoint` ("host:port").
    torchrun runs as `python -m torch.distributed.run`, so workers use this interpreter.
    """
    if not module_args:
        raise LaunchError("no module to launch: give `-- <module> [args...]`")
    if nproc < 1 or nnodes < 1:
        raise LaunchError(f"nproc={nproc} and nnodes={nnodes} must both be at least 1")
    if nproc % nnodes:
        raise LaunchError(
            f"nproc={nproc} processes do not split evenly over nnodes={nnodes} nodes; "
            f"ask for a world size that is a multiple of the node count"
        )
    module, *args = module_args
    cmd = [python, "-m", "torch.distributed.run"]
    if nnodes == 1 and rdzv_endpoint is None:
        cmd += ["--standalone", "--nnodes", "1"]
    else:
        if rdzv_endpoint is None:
            raise LaunchError(f"a launch over nnodes={nnodes} nodes needs a rendezvous endpoint")
        cmd += [
            "--nnodes", str(nnodes),
            "--rdzv-backend", "c10d",
            "--rdzv-endpoint", rdzv_endpoint,
            "--rdzv-id", rdzv_id,
        ]  # fmt: skip
    cmd += ["--nproc-per-node", str(nproc // nnodes), "--max-restarts", "0", "-m", module, *args]
    return cmd


def command(
    run: Mapping[str, Any],
    module_args: Sequence[str],
    module: str = "nanigpt.train",
    python: str = sys.executable,
) -> list[str]:
    """argv for a run on this machine, its parallelism validated against its model first:
    `python -m module ...` for one process, torchrun with one process per rank otherwise."""
    validate_parallelism(
        run.get("parallelism", {}),
        run["model"],
        batch_size=run.get("training", {}).get("batch_size"),
    )
    n = world_size(run.get("parallelism", {}))
    if n == 1:
        return [python, "-m", module, *module_args]
    return torchrun_command(n, 1, [module, *module_args], python=python)


def _scontrol_job(job_id: str) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "show", "job", "--oneliner", job_id],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    fields = {}
    for item in out.split():
        key, sep, value = item.partition("=")
        if sep:
            fields.setdefault(key, value)
    return fields


def _hostnames(nodelist: str) -> list[str]:
    out = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
    ).stdout
    return out.split()


def slurm_allocation(
    env: Mapping[str, str],
    job_info: Callable[[str], dict[str, str]] = _scontrol_job,
    hostnames: Callable[[str], list[str]] = _hostnames,
) -> Allocation | None:
    """The SLURM allocation this process runs in, or None outside a SLURM job."""
    job_id = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    if not job_id:
        return None
    in_step = "SLURM_STEP_ID" in env or "SLURM_STEPID" in env
    # Inside a step, SLURM_NNODES and SLURM_NTASKS count the step's nodes and tasks, not the job's.
    nnodes = env.get("SLURM_JOB_NUM_NODES") or (None if in_step else env.get("SLURM_NNODES"))
    ntasks = None if in_step else env.get("SLURM_NTASKS")
    nodelist = env.get("SLURM_JOB_NODELIST")
    cpus = None if in_step else env.get("SLURM_CPUS_ON_NODE")
    if not (nnodes and ntasks and nodelist and cpus):
        info = job_info(job_id)
        nnodes, ntasks = info["NumNodes"], info["NumTasks"]
        nodelist = info["NodeList"]
        cpus = str(int(info["NumCPUs"]) // int(nnodes.split("-")[0]))
    nodes = hostnames(nodelist)
    if len(nodes) != int(nnodes.split("-")[0]):
        raise LaunchError(f"SLURM job {job_id}: node list {nodelist!r} names {nodes}, not {nnodes}")
    return Allocation(job_id, nodes, int(ntasks), int(cpus), in_step)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def rendezvous_port(alloc: Allocation, env: Mapping[str, str]) -> int:
    for key in ("NANIGPT_RDZV_PORT", "MASTER_PORT"):
        if env.get(key):
            return int(env[key])
    if socket.gethostname().split(".")[0] == alloc.nodes[0].split(".")[0]:
        return _free_port()
    return 20000 + int(alloc.job_id) % 20000


def plan(
    nproc: int,
    module_args: Sequence[str],
    env: Mapping[str, str],
    alloc: Allocation | None = None,
    port: int | None = None,
) -> list[str] | None:
    """The command that starts `nproc` processes of the module; None: run it in this process."""
    if nproc < 1:
        raise LaunchError(f"--nproc must be at least 1, got {nproc}")
    if not module_args:
        raise LaunchError("no module to launch: give `-- <module> [args...]`")
    if nproc == 1:
        return None
    if alloc is None or (alloc.nnodes == 1 and alloc.ntasks == 1):
        return torchrun_command(nproc, 1, module_args)
    endpoint = f"{alloc.nodes[0]}:{port if port is not None else rendezvous_port(alloc, env)}"
    srun = [
        "srun",
        "--nodes", str(alloc.nnodes),
        "--ntasks", str(alloc.nnodes),
        "--ntasks-per-node", "1",
        "--cpus-per-task", str(alloc.cpus),
        "--kill-on-bad-exit=1",
    ]  # fmt: skip
    if alloc.in_step:
        srun.append("--overlap")  # we already run inside a step that holds the job's resources
    return srun + torchrun_command(
        nproc, alloc.nnodes, module_args, rdzv_endpoint=endpoint, rdzv_id=f"slurm{alloc.job_id}"
    )


def step_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment for a nested srun: the job's identity, none of the enclosing step's."""
    return {
        k: v
        for k, v in env.items()
        if not (k.startswith(("SLURM_", "SRUN_", "SBATCH_")) and k not in SLURM_IDENTITY)
    }


def run_module(module_args: Sequence[str]) -> None:
    """Run `module args...` in this process as `python -m module args...` would."""
    module, *args = module_args
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m nanigpt.launch --nproc N -- <module> [args...]`."""
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.launch",
        description="Run a module as N processes: directly, via torchrun, or across a SLURM job.",
    )
    parser.add_argument("--nproc", type=int, default=1, help="number of processes in all")
    parser.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    parser.add_argument("module_args", nargs=argparse.REMAINDER, help="-- <module> [args...]")
    args = parser.parse_args(argv)
    module_args = args.module_args[1:] if args.module_args[:1] == ["--"] else args.module_args
    env = dict(os.environ)
    try:
        alloc = slurm_allocation(env) if args.nproc > 1 else None
        cmd = plan(args.nproc, module_args, env, alloc)
    except (LaunchError, subprocess.CalledProcessError, KeyError) as e:
        raise SystemExit(f"nanigpt.launch: error: {e}") from None
    if args.dry_run:
        print(" ".join(cmd) if cmd else f"(in process) python -m {' '.join(module_args)}")
        return
    if cmd is None:
        run_module(module_args)
        return
    if cmd[0] == "srun":
        env = step_env(env)
        if shutil.which("srun") is None:
            raise SystemExit("nanigpt.launch: error: in a SLURM job but srun is not on PATH")
    print(f"nanigpt.launch: {' '.join(cmd)}", file=sys.stderr, flush=True)
    sys.stderr.flush()
    os.execvpe(cmd[0], cmd, env)


if __name__ == "__main__":
    main()
