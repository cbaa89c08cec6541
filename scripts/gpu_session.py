"""Run the graph's GPU work on a machine without Snakemake: the same CLIs, in dependency order.

Snakemake itself now runs there from carried wheels (scripts/device_wheels.sh and
scripts/device_snakemake.sh; README, "Snakemake on a GPU machine without uv"). This script keeps
what the graph cannot do: spreading runs over several GPUs (one CUDA_VISIBLE_DEVICES per run), a
deadline after which no run starts, MoE specialization on the device without polars (JSON only),
`pick-lr` within one call, and `throughput` (runs outside any config).

Serves questions 1 and 4 on real hardware: the device machine has torch but no uv, Snakemake,
polars or altair, so this script replays what the rules would run (`python -m nanigpt....`, each
command line from `nanigpt.graph.commands`, as the rules take theirs) from a plan resolved here beforehand, and packs the run folders into one archive to bring back; the
aggregate, fit and figures are then built here by the graph's own rules.

    python scripts/gpu_session.py plan workflow/config/h100.yaml --out .gpu/plan.json   # here
    python3 scripts/gpu_session.py sweep --plan .gpu/plan.json --out $OUT           # device
    python3 scripts/gpu_session.py throughput --out $OUT                            # device
    python3 scripts/gpu_session.py pick-lr --probe P.json --plan S.json --out S2.json   # device

`pick-lr` applies an lr probe's result within one call (the device is given back when idle): per
size, the probe run of the lowest `final_val_bpb` gives its lr to every run of that size in the
sweep's plan (what the CPU default's `sizes.*.lr` records by hand from `lr_probe`).

`throughput` trains the dense GPT at GPT-2 124M and 350M shapes (seq 1024, bf16, compiled, random
tokens with vocabulary 50304) for a short window to compare tokens/s and MFU with nanoGPT measured
on the same kind of machine (../shared/ENVIRONMENT.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from nanigpt.graph import commands, paths
from nanigpt.parallel.setting import world_size


def sh(args: list[str], log: Path, env: dict | None = None) -> float:
    """Run one CLI like a rule would (output to its log); raise with the log's tail on failure."""
    started = time.monotonic()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        code = subprocess.call(args, stdout=f, stderr=subprocess.STDOUT, env=env)
    seconds = time.monotonic() - started
    if code != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"failed ({code}): {' '.join(args)}\n{tail}")
    print(f"{seconds:7.1f}s  {' '.join(args[:4])} ...", flush=True)
    return seconds


def plan(config_path: str, out: Path, prediction: Path | None = None) -> None:
    from nanigpt.graph.config import (
        load_config,
        moe_analysed_runs,
        resolve_runs,
        run_settings_json,
    )
    from nanigpt.graph.paths import tokens_dir
    from nanigpt.scaling.predict import held_out_gate_for_plan

    config = load_config(config_path)
    runs = dict(resolve_runs(config))
    # As the graph's prediction_gate: held-out runs are planned only beside the prediction made
    # before them (nanigpt.scaling.predict), whose sha256 the plan records.
    kept, prediction_sha = held_out_gate_for_plan(config, runs, prediction)
    runs = {rid: runs[rid] for rid in kept}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "datasets": config["datasets"],
                "vocab_size": config["tokenizer"]["vocab_size"],
                "tokenizer_impl": config["tokenizer"]["impl"],
                "tokens_dirs": {d: tokens_dir(config, d) for d in config["datasets"]},
                "runs": {rid: json.loads(run_settings_json(r)) for rid, r in runs.items()},
                "moe_analysis": [
                    {"run_id": rid, "eval_dataset": other}
                    for rid, other in moe_analysed_runs(config).items()
                ],
                "moe_max_tokens": (config.get("moe_analysis") or {}).get("max_tokens", 65536),
                "prediction_sha256": prediction_sha,
            },
            indent=1,
        )
    )
    print(f"planned {len(runs)} runs into {out}")


def sweep(
    plan_path: Path,
    out: Path,
    work: Path,
    only: str | None,
    deadline_s: float,
    gpus: int = 1,
    per_gpu: int = 1,
) -> None:
    """Build what the plan needs, skipping outputs a previous call on this machine left."""
    py = sys.executable
    p = json.loads(plan_path.read_text())
    started = time.monotonic()
    if only:
        p["runs"] = {k: v for k, v in p["runs"].items() if re.search(only, k)}
    logs = work / "results/logs"
    timings = {}
    needed = {r["dataset"] for r in p["runs"].values()}
    needed |= {t["eval_dataset"] for t in p.get("moe_analysis", []) if t["run_id"] in p["runs"]}
    impl = p.get("tokenizer_impl", "rust")
    for name in sorted(needed):
        spec = p["datasets"][name]
        syn = work / paths.SYNTHETIC / name
        tok = work / paths.TOKENIZER / p["tokens_dirs"][name] / "tokenizer.json"
        if (work / paths.tokens_folder(p["tokens_dirs"][name]) / "val.bin").exists():
            continue
        timings[f"data_{name}"] = sh(
            commands.build_dataset(name, spec, str(syn), python=py),
            logs / f"data_{name}.log",
        )
        timings[f"tokenizer_{name}"] = sh(
            commands.train_tokenizer(
                str(syn / "train.parquet"), p["vocab_size"], impl, str(tok), python=py
            ),
            logs / f"tokenizer_{name}.log",
        )
        for split in ("train", "val"):
            shard = work / paths.tokens_folder(p["tokens_dirs"][name]) / f"{split}.bin"
            timings[f"encode_{name}_{split}"] = sh(
                commands.encode_tokens(
                    str(tok), str(syn / f"{split}.parquet"), impl, str(shard), python=py
                ),
                logs / f"encode_{name}_{split}.log",
            )
    archive = out / f"sweep{'_' + re.sub(r'[^A-Za-z0-9]+', '', only) if only else ''}.tar.gz"
    try:
        run_all(p, work, logs, timings, started + deadline_s, gpus, per_gpu)
        analyse_moe(p, work, logs, timings, gpus)
    finally:  # whatever finished comes back, also when a run fails or time runs out
        pack(work, archive, timings)


def _cost(run: dict) -> float:
    """Relative training cost of a run (tokens x parameters-ish), for balancing GPUs."""
    m = run["model"]
    return (
        run["tokens"]
        * m["n_layer"]
        * m["d_model"] ** 2
        * (1 + (m.get("moe") or {}).get("top_k", 0))
    )


def _on_gpus(jobs: list[tuple[str, list[str], Path]], gpus: int, timings: dict,
             deadline: float | None = None, per_gpu: int = 1) -> None:  # fmt: skip
    """Run (name, argv, log) jobs, `per_gpu` at a time on each GPU (CUDA_VISIBLE_DEVICES), in order.

    A failed job is reported and the others go on; the first failure is raised at the end."""
    import threading

    lock, queue, failures = threading.Lock(), list(jobs), []

    def worker(gpu: int) -> None:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)}
        while True:
            with lock:
                if not queue:
                    return
                if deadline is not None and time.monotonic() > deadline:
                    print(f"deadline reached: {[q[0] for q in queue]} not started", flush=True)
                    queue.clear()
                    return
                name, argv, log = queue.pop(0)
            try:
                timings[name] = sh(argv, log, env)
            except SystemExit as e:
                print(f"FAILED {name}: {str(e)[-1500:]}", flush=True)
                failures.append(e)

    slots = max(1, gpus) * max(1, per_gpu)
    threads = [threading.Thread(target=worker, args=(g % max(1, gpus),)) for g in range(slots)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]


def run_all(
    p: dict, work: Path, logs: Path, timings: dict, deadline: float, gpus: int = 1, per_gpu: int = 1
) -> None:
    """Train every planned run not trained yet, through the launcher as train.smk does.

    One-process runs share the GPUs (`_on_gpus`; the costliest start first when there are several);
    runs with a world size > 1 follow, one at a time, each over all the GPUs."""
    py = sys.executable
    single, multi = [], []
    order = (
        sorted(p["runs"].items(), key=lambda kv: -_cost(kv[1])) if gpus > 1 else p["runs"].items()
    )
    for run_id, run in order:
        if (work / paths.run_summary(run_id)).exists():
            continue
        tokdir = work / paths.tokens_folder(p["tokens_dirs"][run["dataset"]])
        world = world_size(run["parallelism"])
        job = (
            run_id,
            commands.train_run(
                json.dumps(run),
                world,
                str(tokdir / "train.bin"),
                str(tokdir / "val.bin"),
                str(work / paths.ground_truth(run["dataset"])),
                str(work / paths.run_dir(run_id)),
                python=py,
            ),
            logs / f"train_{run_id}.log",
        )
        (single if world == 1 else multi).append(job)
    try:
        _on_gpus(single, gpus, timings, deadline, per_gpu)
    finally:
        for name, argv, log in multi:
            if time.monotonic() > deadline:
                print(f"deadline reached: {name} not started", flush=True)
                continue
            try:
                timings[name] = sh(argv, log)
            except SystemExit as e:
                print(f"FAILED {name}: {str(e)[-1500:]}", flush=True)


def analyse_moe(p: dict, work: Path, logs: Path, timings: dict, gpus: int) -> None:
    """moe.smk's specialization step for every trained MoE run of the plan (JSON only: no polars
    here; the heatmaps and MI figures are drawn back home from the JSON)."""
    py = sys.executable
    impl = p.get("tokenizer_impl", "rust")
    jobs = []
    for task in p.get("moe_analysis", []):
        rid, other = task["run_id"], task["eval_dataset"]
        run_dir = work / paths.run_dir(rid)
        out = work / f"results/moe/{rid}/specialization.json"
        if not (run_dir / "summary.json").exists() or out.exists():
            continue
        tokdir = work / paths.tokens_folder(p["tokens_dirs"][p["runs"][rid]["dataset"]])
        val = tokdir / "val.bin"
        if other != p["runs"][rid]["dataset"]:
            val = tokdir / f"val_of_{other}.bin"
            if not val.exists():
                tokenizer = tokdir.parent.parent / "tokenizer" / tokdir.name / "tokenizer.json"
                text = work / paths.synthetic(other, "val.parquet")
                sh(
                    commands.encode_tokens(str(tokenizer), str(text), impl, str(val), python=py),
                    logs / f"encode_val_of_{other}_{tokdir.name}.log",
                )
        argv = commands.moe_specialization(
            str(run_dir), str(val), str(out), p.get("moe_max_tokens", 65536), threads=4, python=py
        )
        jobs.append((f"specialization_{rid}", argv, logs / f"specialization_{rid}.log"))
    _on_gpus(jobs, gpus, timings, per_gpu=4)


def pack(work: Path, archive: Path, timings: dict) -> None:
    (work / "timings.json").write_text(json.dumps(timings, indent=1))
    archive.parent.mkdir(parents=True, exist_ok=True)
    keep = (
        "config.json", "metrics.parquet", "summary.json", "comm.json", "ground_truth.json",
        "specialization.json",
    )  # fmt: skip
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(work / "timings.json", arcname="timings.json")
        for path in sorted(work.rglob("*")):
            rel = path.relative_to(work)
            small_trace = path.name == "trace.json.gz" and path.stat().st_size < 4_000_000
            if path.is_file() and (path.name in keep or path.suffix == ".log" or small_trace):
                tar.add(path, arcname=str(rel))
    print(f"packed {archive} ({archive.stat().st_size / 1e6:.1f} MB)")
    split_archive(archive)


PART_BYTES = 15 * 2**20  # the device tool brings back files of at most 16 MiB each


def split_archive(archive: Path, part_bytes: int = PART_BYTES) -> list[Path]:
    """Cut an archive larger than `part_bytes` into `NAME.part00`, `.part01`, ... (and remove it),
    so that every piece comes back; `cat NAME.part* > NAME` joins them again."""
    if archive.stat().st_size <= part_bytes:
        return [archive]
    parts = []
    with archive.open("rb") as f:
        while chunk := f.read(part_bytes):
            part = archive.with_name(f"{archive.name}.part{len(parts):02d}")
            part.write_bytes(chunk)
            parts.append(part)
    archive.unlink()
    print(
        f"split into {len(parts)} parts of at most {part_bytes / 2**20:.0f} MiB: cat {archive.name}.part* > {archive.name}"
    )
    return parts


def throughput(out: Path, work: Path, steps: int) -> None:
    import numpy as np

    from nanigpt.data.shards import write_shard

    py = sys.executable
    vocab = 50304
    rng = np.random.default_rng(0)
    data = work / "data/random"
    for split, n in (("train", 20_000_000), ("val", 2_000_000)):
        tokens = rng.integers(0, vocab, size=n, dtype=np.uint16)
        write_shard(data / f"{split}.bin", tokens, np.zeros(n, np.uint8), byte_count=4 * n,
                    vocab_size=vocab)  # fmt: skip
    (data / "ground_truth.json").write_text(json.dumps({"floor_bits_per_byte": None}))
    shapes = {
        "gpt2_124M_b32": (12, 768, 12, 32),
        "gpt2_350M_b16": (24, 1024, 16, 16),
    }
    timings = {}
    for name, (n_layer, d_model, n_head, batch) in shapes.items():
        run = {
            "run_id": name, "dataset": "random", "arch": "dense", "arch_kind": "dense",
            "size": name, "tokens": steps * batch * 1024, "parallelism_name": "single",
            "parallelism": {"dp": 1, "fsdp": 1, "tp": 1, "ep": 1},
            "model": {"vocab_size": vocab, "seq_len": 1024, "n_layer": n_layer,
                      "d_model": d_model, "n_head": n_head, "mlp_ratio": 8 / 3,
                      "tied_embeddings": True, "moe": None},
            "training": {"seq_len": 1024, "batch_size": batch, "grad_accum": 1, "lr": 6e-4,
                         "min_lr_frac": 0.1, "warmup_frac": 0.05, "schedule": "cosine",
                         "weight_decay": 0.1, "grad_clip": 1.0, "eval_every": 10_000,
                         "eval_batches": 2, "seed": 0, "device": "cuda", "compile": True,
                         "threads": 4, "checkpoint_every": 0},
            "profile": {"enabled": True, "wait": steps - 8, "warmup": 2, "active": 3},
        }  # fmt: skip
        timings[name] = sh(
            commands.train_run(
                json.dumps(run),
                world_size(run["parallelism"]),
                str(data / "train.bin"),
                str(data / "val.bin"),
                str(data / "ground_truth.json"),
                str(work / paths.run_dir(name)),
                python=py,
            ),
            work / f"results/logs/train_{name}.log",
        )
        summary = json.loads((work / paths.run_summary(name)).read_text())
        n, tps = summary["params_total"], summary["tokens_per_s"]
        nanogpt_mfu = (6 * n + 12 * n_layer * d_model * 1024) * tps / 989e12
        print(f"{name}: {tps:,.0f} tok/s, MFU (ours) {summary['mfu']}, MFU (nanoGPT formula) "
              f"{nanogpt_mfu:.3f}, params {n:,}", flush=True)  # fmt: skip
    pack(work, out / "throughput.tar.gz", timings)


def pick_lr(probe_path: Path, plan_path: Path, out: Path, work: Path) -> dict:
    """Per size, the lr of the probe's best run (lowest final_val_bpb), set on the plan's runs;
    per (arch, size) when the probe holds several archs (each arch its own pick: keys
    `arch/size`)."""
    probe = json.loads(probe_path.read_text())
    per_arch = len({run.get("arch") for run in probe["runs"].values()}) > 1

    def key(run: dict) -> str:
        return f"{run.get('arch')}/{run['size']}" if per_arch else run["size"]

    losses: dict[str, dict[float, float]] = {}
    for run_id, run in probe["runs"].items():
        summary = work / paths.run_summary(run_id)
        if summary.exists():
            bpb = json.loads(summary.read_text())["final_val_bpb"]
            losses.setdefault(key(run), {})[run["training"]["lr"]] = bpb
    picks = {k: min(by_lr, key=by_lr.get) for k, by_lr in losses.items()}
    p = json.loads(plan_path.read_text())
    for run in p["runs"].values():
        if key(run) in picks:
            run["training"]["lr"] = picks[key(run)]
    unpicked = sorted({key(r) for r in p["runs"].values()} - set(picks))
    out.write_text(json.dumps(p, indent=1))
    result = {"picks": picks, "losses": {k: {str(a): b for a, b in v.items()} for k, v in losses.items()},
              "sizes_without_probe": unpicked}  # fmt: skip
    print(f"lr picks {picks}; no probe result for {unpicked}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["plan", "sweep", "throughput", "pick-lr"])
    parser.add_argument("config", nargs="?", help="(plan) the YAML config to resolve")
    parser.add_argument("--plan", type=Path, default=Path(".gpu/plan.json"))
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_out")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/nanigpt-gpu"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument(
        "--prediction", type=Path,
        help="(plan) prediction.json made before the held-out runs: without it they are left out",
    )  # fmt: skip
    parser.add_argument("--probe", type=Path, help="(pick-lr) the lr probe's plan")
    parser.add_argument("--picks", type=Path, help="(pick-lr) where to write the picks (JSON)")
    parser.add_argument("--only", help="(sweep) only runs whose id matches this regex")
    parser.add_argument("--deadline-s", type=float, default=480, help="(sweep) start no run after")
    parser.add_argument("--gpus", type=int, default=1, help="(sweep) GPUs to spread runs over")
    parser.add_argument(
        "--per-gpu", type=int, default=1,
        help="(sweep) runs sharing one GPU at once (small models; their tok/s are then shared)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.mode == "plan":
        plan(args.config, args.out, args.prediction)
    elif args.mode == "sweep":
        sweep(args.plan, args.out, args.work, args.only, args.deadline_s, args.gpus, args.per_gpu)
    elif args.mode == "pick-lr":
        result = pick_lr(args.probe, args.plan, args.out, args.work)
        if args.picks:
            args.picks.write_text(json.dumps(result, indent=1) + "\n")
    else:
        throughput(args.out, args.work, args.steps)


if __name__ == "__main__":
    main()
