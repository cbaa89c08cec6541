"""The one launcher path: the command that starts a run with the right number of processes.

Serves core question 2 (training at each parallelism setting is a dimension of the graph): the
training rule asks `command(run, module_args)` for its command line. A setting whose world size is
1 runs as a plain `python -m ...`; any other is validated first (so a bad setting fails before any
process starts) and started by `torchrun --standalone --nproc-per-node N` on one machine (gloo on
the CPU, NCCL on GPUs: `mesh.init_distributed` picks). Across nodes, the SLURM profile wraps the
same command in `srun` with torchrun's rendezvous arguments instead of `--standalone`: that is
`nanigpt.launch` (SLURM-aware), which `graph_command` targets after the same validation.

CLI (for a rule that needs the process count): `python -m nanigpt.parallel.launch --run-config
run.json` prints the world size, or refuses the setting with the reason on stderr (exit 2).
"""

from __future__ import annotations

import shlex
import sys
from typing import Any

from nanigpt.parallel.apply import validate_parallelism

# Environment for multi-GPU runs: NVLink multicast (NVLS) off, as the device README asks.
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0"}
CPU_ENV = {"OMP_NUM_THREADS": "1"}


def world_size(run: dict[str, Any]) -> int:
    """Number of processes a run needs (after validation against its model)."""
    setting = validate_parallelism(
        run.get("parallelism", {}),
        run["model"],
        batch_size=run.get("training", {}).get("batch_size"),
    )
    return setting.world_size


def command(
    run: dict[str, Any],
    module_args: list[str],
    module: str = "nanigpt.train",
    python: str = sys.executable,
) -> list[str]:
    """argv for the run: `python -m module ...` or `python -m torch.distributed.run ... -m module ...`."""
    n = world_size(run)
    if n == 1:
        return [python, "-m", module, *module_args]
    return [
        python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
        "-m", module, *module_args,
    ]  # fmt: skip


def graph_command(
    run: dict[str, Any],
    module_args: list[str],
    module: str = "nanigpt.train",
    python: str = sys.executable,
) -> list[str]:
    """The same run through `nanigpt.launch` (torchrun locally, srun + torchrun under SLURM)."""
    n = world_size(run)
    return [python, "-m", "nanigpt.launch", "--nproc", str(n), "--", module, *module_args]


def environment(run: dict[str, Any], gpu: bool) -> dict[str, str]:
    """Extra environment variables for the launch."""
    if world_size(run) == 1:
        return {}
    return dict(NCCL_ENV) if gpu else dict(CPU_ENV)


def shell(run: dict[str, Any], module_args: list[str], **kwargs) -> str:
    return shlex.join(command(run, module_args, **kwargs))


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json

    ap = argparse.ArgumentParser(description="Print the process count of a run (validated).")
    ap.add_argument("--run-config", required=True)
    args = ap.parse_args(argv)
    with open(args.run_config) as f:
        run = json.load(f)
    try:
        print(world_size(run))
    except ValueError as err:
        print(f"{args.run_config}: {err}", file=sys.stderr)
        raise SystemExit(2) from err


if __name__ == "__main__":
    main()
