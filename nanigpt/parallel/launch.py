"""How many processes a run needs, and the command that starts them, validated first.

Serves core question 2 (training at each parallelism setting is a dimension of the graph): a bad
setting is refused here, before any process starts. The command itself comes from the one launcher,
`nanigpt.launch` (which the training rule calls, and which adds srun + a rendezvous under SLURM):
a world size of 1 runs as a plain `python -m ...`, any other under `torchrun` on this machine.

CLI (for a rule that needs the process count): `python -m nanigpt.parallel.launch --run-config
run.json` prints the world size, or refuses the setting with the reason on stderr (exit 2).
"""

from __future__ import annotations

import sys
from typing import Any

from nanigpt.launch import torchrun_command
from nanigpt.parallel.apply import validate_parallelism


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
    """argv for the run: `python -m module ...`, or torchrun with one process per rank."""
    n = world_size(run)
    if n == 1:
        return [python, "-m", module, *module_args]
    return torchrun_command(n, 1, [module, *module_args], python=python)


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
