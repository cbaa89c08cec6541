"""fp8 against bf16 through the trainer's own loop, on real text: the numerical cost of FP8.

Serves core question 1's last waterfall steps (issue 30): a faster number format is only a win if
the model learns as well. Two runs of `nanigpt.train` (started as the graph starts it, through
`nanigpt.launch`), identical but for `model.precision`, same seed and so the same batches: the best
bf16 model settings of the waterfall (fused projections, fusable RoPE/norm, the attention backend
given) and the same with `precision: fp8` (torchao float8 training, rowwise scaling;
`nanigpt.model.fp8`). Their final validation losses (nats/token) are compared; the relative gap
is the finding. Each run's summary also gives the trainer's own tokens/s (median step time), which
the waterfall's harness row of the same settings should match within 5% (what the figure promises
is what a run gets).

Real text with no download: the bytes of the interpreter's standard-library `.py` files
(`nanigpt.data.realtext`'s corpus), one byte per token, files split train/val 19:1 in sorted order;
the model keeps GPT-2's padded vocabulary (50304) so the step has the throughput harness's shape.

    python -m nanigpt.bench.fp8_loss --out fp8_loss.json --work /tmp/fp8loss --steps 1000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nanigpt.bench.throughput import GPU_SEQ as SEQ
from nanigpt.bench.throughput import GPU_SHAPES as SHAPE
from nanigpt.bench.throughput import GPU_VOCAB as VOCAB
from nanigpt.bench.waterfall import settings_at
from nanigpt.io import write_json_atomic

BEST_BF16 = settings_at("fusable_rope_norm")[0]  # the waterfall's best bf16 model settings


def stdlib_bytes(val_every: int = 20) -> tuple[bytes, bytes]:
    """(train, val) bytes of `nanigpt.data.realtext`'s corpus (the stdlib's .py files outside
    site-packages and test suites, sorted), every `val_every`-th file to val."""
    from nanigpt.data.realtext import stdlib_files, stdlib_root

    train, val = bytearray(), bytearray()
    for i, path in enumerate(stdlib_files(stdlib_root())):
        (val if i % val_every == 0 else train).extend(path.read_bytes())
    return bytes(train), bytes(val)


def write_data(folder: Path) -> dict[str, Any]:
    import numpy as np

    from nanigpt.data.shards import write_shard

    folder.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for split, text in zip(("train", "val"), stdlib_bytes(), strict=True):
        tokens = np.frombuffer(text, dtype=np.uint8).astype(np.uint16)
        write_shard(folder / f"{split}.bin", tokens, np.zeros(len(tokens), np.uint8),
                    byte_count=len(text), vocab_size=VOCAB)  # fmt: skip
        sizes[split] = len(tokens)
    write_json_atomic(folder / "ground_truth.json", {"floor_bits_per_byte": None})
    return sizes


def run_dict(name: str, shape: str, steps: int, model: dict[str, Any]) -> dict[str, Any]:
    n_layer, d_model, n_head, batch = SHAPE[shape]
    return {
        "run_id": name, "dataset": "stdlib_bytes", "arch": "dense", "arch_kind": "dense",
        "size": shape, "tokens": steps * batch * SEQ, "parallelism_name": "single",
        "parallelism": {"dp": 1, "fsdp": 1, "tp": 1, "ep": 1},
        "model": {"vocab_size": VOCAB, "seq_len": SEQ, "n_layer": n_layer, "d_model": d_model,
                  "n_head": n_head, "mlp_ratio": 8 / 3, "tied_embeddings": True, "moe": None,
                  **model},
        "training": {"seq_len": SEQ, "batch_size": batch, "grad_accum": 1, "lr": 6e-4,
                     "min_lr_frac": 0.1, "warmup_frac": 0.05, "schedule": "cosine",
                     "weight_decay": 0.1, "grad_clip": 1.0, "eval_every": steps,
                     "eval_batches": 40, "seed": 0, "device": "cuda", "compile": True,
                     "threads": 4, "checkpoint_every": 0, "checkpoint_format": "torch"},
        "profile": None,  # the default window
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nanigpt.bench.fp8_loss", description=__doc__)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path("/tmp/nanigpt-fp8loss"))
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--shape", default="gpt2_124M_b32", choices=sorted(SHAPE))
    p.add_argument("--attention-backend", default="auto")
    p.add_argument("--precisions", default="bf16,fp8", help="comma-separated, bf16 first")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps: expected an integer >= 1")
    from nanigpt.graph import commands
    from nanigpt.parallel.setting import world_size

    data = args.work / "data"
    sizes = write_data(data)
    result: dict[str, Any] = {"shape": args.shape, "steps": args.steps, "data_tokens": sizes,
                              "runs": {}}  # fmt: skip
    for precision in args.precisions.split(","):
        model = {**BEST_BF16, "attention_backend": args.attention_backend, "precision": precision}
        name = f"{args.shape}_{precision}"
        run = run_dict(name, args.shape, args.steps, model)
        out = args.work / "runs" / name
        argv_ = commands.train_run(json.dumps(run), world_size(run["parallelism"]),
                                   str(data / "train.bin"), str(data / "val.bin"),
                                   str(data / "ground_truth.json"), str(out),
                                   python=sys.executable)  # fmt: skip
        started = time.monotonic()
        log = args.work / f"{name}.log"
        with log.open("w") as f:
            code = subprocess.call(argv_, stdout=f, stderr=subprocess.STDOUT)
        if code != 0:
            result["runs"][precision] = {"exit_code": code, "log": log.read_text()[-3000:]}
            print(f"{name}: failed ({code})\n{log.read_text()[-3000:]}", flush=True)
            write_json_atomic(args.out, result)
            continue
        summary = json.loads((out / "summary.json").read_text())
        keep = ("final_val_loss", "final_val_bpb", "tokens_per_s", "mfu", "wall_s", "params_total")
        result["runs"][precision] = {k: summary.get(k) for k in keep}
        result["runs"][precision].update(
            model=model, wall_with_compile_s=time.monotonic() - started
        )
        print(f"{name}: {result['runs'][precision]}", flush=True)
        write_json_atomic(args.out, result)
    runs = result["runs"]
    if all("final_val_loss" in runs.get(k, {}) for k in ("bf16", "fp8")):
        ref, fp8 = runs["bf16"]["final_val_loss"], runs["fp8"]["final_val_loss"]
        result["fp8_val_loss_rel_gap"] = fp8 / ref - 1
        result["fp8_tokens_per_s_ratio"] = (
            runs["fp8"]["tokens_per_s"] / runs["bf16"]["tokens_per_s"]
        )
        print(f"fp8 / bf16 val loss - 1 = {result['fp8_val_loss_rel_gap']:+.4%}; tokens/s ratio "
              f"{result['fp8_tokens_per_s_ratio']:.3f}", flush=True)  # fmt: skip
    write_json_atomic(args.out, result)
    return (
        0
        if len(runs) == len(args.precisions.split(","))
        and all("final_val_loss" in r for r in runs.values())
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
