"""A tiny distributed program for the launcher tests: every rank adds its rank + 1 with all_reduce.

Run under torchrun (RANK/WORLD_SIZE/MASTER_ADDR set); rank 0 writes a JSON file with the world
size, the reduced sum, and the host and pid of every rank, so a test can tell how the processes
were placed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    placed = [None] * world
    dist.all_gather_object(placed, {"rank": rank, "host": socket.gethostname(), "pid": os.getpid()})
    if rank == 0:
        out = Path(args.out)
        tmp = out.with_suffix(".tmp")
        result = {
            "world_size": world,
            "sum": value.item(),
            "ranks": placed,
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        }
        tmp.write_text(json.dumps(result))
        tmp.rename(out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
