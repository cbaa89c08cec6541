"""Checkpoint stall: how long each way of saving blocks the training loop, and when it is durable.

Serves the Rust track's checkpointing question (issue 20: "Rust makes a significant difference in
... checkpointing"). For state dicts of the given sizes, in one process, side by side:
- `torch_sha256`: today's path, `nanigpt.training.checkpoint.torch_format.save` (torch.save to memory, sha256, write,
  fsync, rename): synchronous, so blocked == durable;
- `safetensors`: `safetensors.torch.save_file` + fsync (synchronous);
- `dcp_async`: `torch.distributed.checkpoint.async_save` (a gloo group of world size 1): blocked
  is the call (it stages the tensors to CPU), durable is when its future resolves;
- `rust`: `nanigpt.training.checkpoint.rust_format.Writer.save` (snapshot into a reused staging buffer, pinned on
  a GPU; write, xxh3-128, fsync, rename on a Rust thread): blocked is the call, durable is `wait`.
The loop thread idles while a background write runs (it calls wait at once), so the durable times
of the async methods are their best case; on a loaded machine a training loop would compete with
the writer thread for cores. After the last repeat of each size, `rust` and `torch_sha256` files are
loaded, verified (hash) and compared with the state dict bit for bit (`verified`).

    python -m nanigpt.bench.checkpoint --sizes-mb 10 100 500 --repeats 3 \
        --out results/rust/checkpoint.parquet
    python -m nanigpt.bench.checkpoint --model gpt2_124M gpt2_350M --device cuda --out ...

Writes the long table (one row per method, size and repeat) and `checkpoint.svg` beside it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from nanigpt.io import atomic_path, write_json_atomic
from nanigpt.measure.provenance import device_name
from nanigpt.training.checkpoint import rust_format as checkpoint_rust
from nanigpt.training.checkpoint import state as run_state
from nanigpt.training.checkpoint import torch_format

log = logging.getLogger("nanigpt.bench.checkpoint")
METHODS = ("torch_sha256", "safetensors", "dcp_async", "rust")
MODELS = {  # GPT-2 small and medium (Radford et al. 2019, Table 2), for --model
    "gpt2_124M": {"n_layer": 12, "d_model": 768, "n_head": 12},
    "gpt2_350M": {"n_layer": 24, "d_model": 1024, "n_head": 16},
}


def synthetic_state(size_mb: float, device: str) -> dict[str, Any]:
    """A trainer-shaped payload of about `size_mb` MB: fp32 weights in 4 MB tensors plus small
    ones, an AdamW-like optimizer state of two moments per weight (so weights are 1/3)."""
    n_elems = max(1, int(size_mb * 1e6 / 4 / 3))
    chunk = 1 << 20
    sizes = [chunk] * (n_elems // chunk) + ([n_elems % chunk] if n_elems % chunk else [])
    g = torch.Generator().manual_seed(0)
    model = {f"blocks.{i}.w": torch.randn(n, generator=g) for i, n in enumerate(sizes)}
    state = {
        i: {"step": torch.tensor(10.0), "exp_avg": torch.randn_like(w), "exp_avg_sq": w.abs()}
        for i, w in enumerate(model.values())
    }
    optimizer = {"state": state, "param_groups": [{"lr": 1e-3, "params": list(state)}]}
    return _to(
        {"step": 10, "model": model, "optimizer": optimizer, "rng": run_state.rng_state()}, device
    )


def model_state(name: str, device: str) -> dict[str, Any]:
    """The real GPT model of `name` (fp32) and its AdamW state after one step."""
    from nanigpt.model.config import GPTConfig
    from nanigpt.model.gpt import GPT

    cfg = {"vocab_size": 50257, "seq_len": 1024, "mlp_ratio": 4.0, "tied_embeddings": True}
    model = GPT(GPTConfig.from_dict({**cfg, **MODELS[name], "moe": None})).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    return {
        "step": 1,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": run_state.rng_state(),
    }


def _to(obj: Any, device: str) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def tensors_of(obj: Any) -> dict[str, torch.Tensor]:
    _, tensors = checkpoint_rust.flatten(obj)
    return tensors


def nbytes(obj: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors_of(obj).values())


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Dcp:
    """torch.distributed.checkpoint.async_save in a process group of one (gloo)."""

    def __init__(self) -> None:
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp

        self.dcp, self.reason = dcp, None
        if not dist.is_initialized():
            store = dist.HashStore()
            dist.init_process_group("gloo", store=store, rank=0, world_size=1)

    def save(self, state: dict[str, Any], folder: Path) -> tuple[float, float]:
        shutil.rmtree(folder, ignore_errors=True)
        start = time.perf_counter()
        future = self.dcp.async_save(state, checkpoint_id=str(folder))
        blocked = time.perf_counter() - start
        future.result()
        return blocked, time.perf_counter() - start


def time_method(method: str, state: dict, folder: Path, writer, dcp) -> tuple[float, float]:
    """(seconds the caller is blocked, seconds until the file is durable)."""
    start = time.perf_counter()
    if method == "torch_sha256":
        torch_format.save(folder / "checkpoint.pt", state)
        elapsed = time.perf_counter() - start
        return elapsed, elapsed
    if method == "safetensors":
        from safetensors.torch import save_file

        path = folder / "model.safetensors"
        unique, seen = {}, set()  # save_file refuses tensors sharing memory (tied embeddings)
        for k, v in tensors_of(state).items():
            if v.data_ptr() not in seen or v.numel() == 0:
                seen.add(v.data_ptr())
                unique[k] = v.contiguous()
        save_file(unique, str(path))
        fsync_path(path)
        elapsed = time.perf_counter() - start
        return elapsed, elapsed
    if method == "dcp_async":
        return dcp.save(state, folder / "dcp")
    handle = writer.save(folder / "checkpoint.safetensors", state)
    blocked = time.perf_counter() - start
    writer.wait()
    del handle
    return blocked, time.perf_counter() - start


def verify(method: str, state: dict, folder: Path) -> bool:
    if method == "rust":
        loaded = checkpoint_rust.load(folder / "checkpoint.safetensors")
    elif method == "torch_sha256":
        loaded = torch_format.load(folder / "checkpoint.pt")
    else:
        return None
    ours, theirs = tensors_of(state), tensors_of(loaded)
    return ours.keys() == theirs.keys() and all(
        torch.equal(ours[k].cpu().view(-1).view(torch.uint8), theirs[k].view(-1).view(torch.uint8))
        for k in ours
    )


def available(method: str) -> tuple[Any, str | None]:
    """(helper object, reason it cannot run) for the optional methods."""
    try:
        if method == "safetensors":
            import safetensors.torch  # noqa: F401
        if method == "dcp_async":
            return Dcp(), None
    except Exception as e:  # an optional library that cannot run here: recorded, not fatal
        return None, f"{type(e).__name__}: {e}".splitlines()[0]
    return None, None


def bench(states: dict[str, dict], methods, repeats: int, folder: Path, device: str) -> list:
    rows = []
    helpers = {m: available(m) for m in methods}
    writer = checkpoint_rust.Writer()
    for label, state in states.items():
        size = nbytes(state)
        for method in methods:
            helper, reason = helpers[method]
            if reason is not None:
                log.warning(f"{method}: skipped ({reason})")
                rows.append(_row(label, size, method, None, None, None, None, reason, device))
                continue
            for r in range(repeats):
                try:
                    blocked, durable = time_method(method, state, folder, writer, helper)
                except Exception as e:  # a library that cannot save this state: recorded
                    if method in ("rust", "torch_sha256"):
                        raise
                    reason = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                    log.warning(f"{label} {method}: failed ({reason})")
                    rows.append(_row(label, size, method, None, None, None, None, reason, device))
                    break
                ok = verify(method, state, folder) if r == repeats - 1 else None
                rows.append(_row(label, size, method, r, blocked, durable, ok, None, device))
                checked = "" if ok is None else f", verified {ok}"
                message = f"{label} {method} #{r}: blocked {blocked:.3f}s, durable {durable:.3f}s"
                log.info(f"{message}{checked}")
            for p in folder.iterdir():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    return rows


def _row(label, size, method, repeat, blocked, durable, ok, reason, device) -> dict:
    return {
        "state": label,
        "state_bytes": size,
        "method": method,
        "repeat": repeat,
        "blocked_s": blocked,
        "durable_s": durable,
        "verified": ok,
        "skipped": reason,
        "device": device,
        "machine": device_name(torch.device(device)),
    }


def summarize(df):
    """Median and spread (min, max) per state and method, and the blocked ratio to torch_sha256
    (a polars DataFrame in and out)."""
    import polars as pl

    timed = df.filter(pl.col("blocked_s").is_not_null())
    out = timed.group_by("state", "state_bytes", "method").agg(
        pl.col("blocked_s").median().alias("blocked_median_s"),
        pl.col("blocked_s").min().alias("blocked_min_s"),
        pl.col("blocked_s").max().alias("blocked_max_s"),
        pl.col("durable_s").median().alias("durable_median_s"),
        pl.col("durable_s").min().alias("durable_min_s"),
        pl.col("durable_s").max().alias("durable_max_s"),
    )
    ref = out.filter(pl.col("method") == "torch_sha256").select(
        "state", pl.col("blocked_median_s").alias("ref_blocked")
    )
    return (
        out.join(ref, on="state", how="left")
        .with_columns(
            (pl.col("blocked_median_s") / pl.col("ref_blocked")).alias("blocked_vs_torch")
        )
        .drop("ref_blocked")
        .sort("state_bytes", "method")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=float, nargs="*", default=[], help="synthetic sizes")
    parser.add_argument("--model", nargs="*", default=[], choices=sorted(MODELS))
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dir", type=Path, help="where the files go (default: beside --out)")
    parser.add_argument("--out", type=Path, required=True, help="…/checkpoint.parquet")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.sizes_mb and not args.model:
        print("error: give --sizes-mb and/or --model", file=sys.stderr)
        return 2
    if any(s <= 0 for s in args.sizes_mb) or args.repeats < 1:
        print("error: --sizes-mb must be > 0 and --repeats >= 1", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no GPU is visible", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    parent = Path(args.dir or args.out.parent)
    parent.mkdir(parents=True, exist_ok=True)  # --dir may name a folder that does not exist yet
    folder = Path(tempfile.mkdtemp(prefix=".bench_checkpoint.", dir=parent))
    try:
        states = {f"{s:g}MB": synthetic_state(s, args.device) for s in args.sizes_mb}
        states.update({m: model_state(m, args.device) for m in args.model})
        rows = bench(states, args.methods, args.repeats, folder, args.device)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    write_json_atomic(args.out.with_suffix(".json"), rows)  # needs nothing but the stdlib
    try:
        import polars as pl
    except ImportError:  # the lent GPU machines have no polars: the table is built back home
        print(f"no polars here: rows in {args.out.with_suffix('.json')}", file=sys.stderr)
        return 0
    df = pl.DataFrame(rows)
    summary = summarize(df)
    print(summary)
    with atomic_path(args.out) as tmp:
        df.write_parquet(tmp)
    from nanigpt.plots import save_chart
    from nanigpt.plots.rust_bench import checkpoint_chart

    save_chart(checkpoint_chart(summary), args.out.with_suffix(".svg"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
