"""torchrun helper for tests/test_golden.py: train one small run per strategy through `train()`.

Usage: torchrun --standalone --nproc-per-node N tests/distributed/golden_runs.py DATA OUT CASE...
where DATA holds train.bin, val.bin and ground_truth.json and CASE is `arch:strategy` (arch
dense|moe). Every case trains tests/test_golden.py's `golden_run` under its strategy, in one launch
to pay the start-up once; rank 0 writes OUT/<arch>_<strategy>/ as the trainer does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch.distributed as dist

from nanigpt.train import train
from tests.test_golden import golden_run


def main() -> None:
    data, out, cases = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    for case in cases:
        arch, strategy = case.split(":")
        run = golden_run(arch, strategy)
        train(run, data / "train.bin", data / "val.bin", data / "ground_truth.json", out / case)
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
