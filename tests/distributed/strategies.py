"""torchrun helper for tests/test_parallel.py: run several strategies in one launch, write JSON.

Usage: torchrun --standalone --nproc-per-node N tests/distributed/strategies.py OUT.json CASE...
where CASE is `arch:strategy[:bucket=BYTES][:accum=K]` (arch dense|moe|moe_cap). Rank 0 writes, per case,
the loss trajectory, the single-process reference on the same data shards, the ledger's bytes of
the recorded step by (op, purpose) and the analytical expectation.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from nanigpt.bench.parallel import (
    DENSE,
    MOE,
    make_batches,
    reference_losses,
    run_case,
    settings_for,
)
from nanigpt.parallel.mesh import init_distributed

STEPS = 4
BATCH = 8

ARCHS = {
    "dense": DENSE,
    "moe": MOE,
    "moe_cap": {**MOE, "moe": {**MOE["moe"], "capacity_factor": 1.0}},
}


def main() -> None:
    out_path, cases = sys.argv[1], sys.argv[2:]
    rank, world, device = init_distributed()
    torch.set_num_threads(1)
    results, refs = {}, {}
    for case in cases:
        arch, strategy, *rest = case.split(":")
        opts = {k: int(v) for k, v in (o.split("=") for o in rest)}
        accum = opts.get("accum", 1)
        cfg = ARCHS[arch]
        kind = "moe" if arch.startswith("moe") else "dense"
        setting = next(s for s in settings_for(world, kind) if s["strategy"] == strategy)
        batches = make_batches(cfg, BATCH, STEPS)
        res = run_case(
            setting,
            cfg,
            batches,
            device,
            record_step=0,
            bucket_bytes=opts.get("bucket"),
            accum=accum,
        )
        par, ledger = res["par"], res["ledger"]
        by = {f"{op}:{purpose}": b for (op, purpose), b in ledger.bytes_by(0).items()}
        counts = {}
        for r in ledger.step_records(0):
            key = f"{r.op}:{r.purpose}"
            counts[key] = counts.get(key, 0) + 1
        data_world = par.data_world
        row = {
            "setting": res["setting"],
            "losses": res["losses"],
            "grad_norms": res["grad_norms"],
            "bytes": by,
            "counts": counts,
            "expected": res["expected"],
            "param_bytes": sum(p.numel() * p.element_size() for p in par.model.parameters()),
            "data_world": data_world,
        }
        if strategy in ("ep", "fsdp2_ep"):
            # rows sent to other ranks, from the routing itself: forward and backward payloads
            row["ep_dispatch_bytes_expected"] = _ep_expected(par, cfg, batches[0], device)
        if strategy.startswith("tp"):
            from nanigpt.parallel.tensor import expected_activation_bytes

            row["tp_activation_bytes_expected"] = expected_activation_bytes(
                par.model, BATCH, cfg["seq_len"]
            )
        key = (arch, data_world * accum)
        if rank == 0 and key not in refs:
            refs[key] = reference_losses(cfg, batches, data_world * accum, device)
        if rank == 0:
            row["reference"], row["reference_grad_norms"] = refs[key]
        results[case] = row
        dist.barrier()
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


def _ep_expected(par, cfg, batch, device) -> int:
    """Bytes the ep all_to_alls must move in the recorded step (step 0), from the routing of the
    same initial weights on every data rank's rows: per MoE layer, forward sends this rank's kept
    rows and sends back the rows it received; backward the same two in reverse; so
    2 * (rows sent + rows received) * d_model * 4 bytes, plus the counts (num_experts int64)."""
    from nanigpt.bench.parallel import build_model

    ref = build_model(cfg, device)
    ep = par.setting.ep
    me = dist.get_rank(par.mesh["ep"].get_group())
    x = batch[0]
    rows = x.shape[0] // par.data_world
    stats_by_rank = []
    for r in range(par.data_world):
        stats_by_rank.append(ref(x[r * rows : (r + 1) * rows].to(device)).moe_stats)
    total = 0
    experts = cfg["moe"]["num_experts"]
    local = experts // ep
    mine = slice(me * local, (me + 1) * local)
    # the ep peers of this rank are the data ranks that differ only in the ep coordinate
    base = par.data_rank - me
    for layer, stats in enumerate(stats_by_rank[par.data_rank]):
        sent = int(stats["tokens_per_expert"].sum())
        received = sum(
            int(stats_by_rank[base + peer][layer]["tokens_per_expert"][mine].sum())
            for peer in range(ep)
        )
        total += 2 * (sent + received) * cfg["d_model"] * 4 + experts * 8
    return total


if __name__ == "__main__":
    main()
