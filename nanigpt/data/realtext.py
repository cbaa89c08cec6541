"""Real text with no download: the Python standard library's own source files.

Serves the principle "synthetic first, then real data": once a result is understood on data whose
floor is known, the same graph reruns it on real text to see how far it deviates. The corpus is
whatever `.py` files this interpreter ships (found through `sysconfig`), so every machine with the
same Python version builds the same bytes and no hub or network is involved. Its loss floor is
unknown, and ground_truth.json says so (`floor_bits_per_byte: null`).

Each file is one document; `source_id` is the top-level package the file belongs to, numbered in
sorted order (so expert routing can be scored against "which part of the stdlib wrote this"), and
the split into train/val is a seeded shuffle of the files.

CLI (same contract as the synthetic data):
    python -m nanigpt.data.realtext --name NAME --spec-json '<json dict>' --out DIR
    (or `--spec-json @PATH`, a file holding the JSON)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import sysconfig
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nanigpt.io import atomic_path, json_arg, write_json_atomic
from nanigpt.keys import check_keys

log = logging.getLogger(__name__)


class RealTextError(ValueError):
    """A bad real-text dataset definition; the message names the key."""


@dataclass(frozen=True)
class RealTextSpec:
    kind: str = "python_stdlib"
    seed: int = 0
    max_bytes: int = 4_000_000  # total utf-8 bytes kept (files in shuffled order until the budget)
    val_fraction: float = 0.05
    max_file_bytes: int = 200_000  # very large files are skipped, so no one file dominates

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> RealTextSpec:
        check_keys(spec, [f.name for f in fields(cls)], error=RealTextError)
        out = cls(**spec)
        if out.kind != "python_stdlib":
            raise RealTextError(f"key 'kind': expected 'python_stdlib', got {out.kind!r}")
        if out.max_bytes < 1000:
            raise RealTextError(f"key 'max_bytes': {out.max_bytes} is below 1000")
        if not 0 < out.val_fraction < 1:
            raise RealTextError(f"key 'val_fraction': {out.val_fraction} not in (0, 1)")
        if out.max_file_bytes < 1:
            raise RealTextError(f"key 'max_file_bytes': {out.max_file_bytes} must be >= 1")
        return out


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path) -> list[Path]:
    """Every .py file of the stdlib outside site-packages and test suites, in sorted order."""
    skip = {"site-packages", "test", "tests", "idlelib", "__pycache__"}
    files = [
        p
        for p in root.rglob("*.py")
        if not (set(p.relative_to(root).parts[:-1]) & skip) and p.is_file()
    ]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def package_of(path: Path, root: Path) -> str:
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else "<top>"


def build(spec: RealTextSpec, root: Path | None = None) -> dict[str, list]:
    """Documents for train and val: seeded file order, byte budget, package labels."""
    root = root or stdlib_root()
    files = stdlib_files(root)
    if not files:
        raise RealTextError(f"no .py files found under {root}")
    packages = sorted({package_of(p, root) for p in files})
    label = {name: i for i, name in enumerate(packages)}
    order = np.random.default_rng(spec.seed).permutation(len(files))
    docs, used = [], 0
    for index in order:
        path = files[index]
        text = path.read_bytes().decode("utf-8", errors="replace")
        size = len(text.encode("utf-8"))
        if size == 0 or size > spec.max_file_bytes:
            continue
        if used + size > spec.max_bytes:
            break
        docs.append((text, label[package_of(path, root)], int(index)))
        used += size
    n_val = max(1, round(len(docs) * spec.val_fraction))
    if len(docs) < 2:
        raise RealTextError(f"max_bytes={spec.max_bytes} keeps fewer than two files")
    return {"val": docs[:n_val], "train": docs[n_val:], "packages": packages, "root": str(root)}


def write_parquet(path: Path, docs: list[tuple[str, int, int]]) -> None:
    table = pa.table(
        {
            "text": pa.array([d[0] for d in docs], pa.string()),
            "source_id": pa.array([d[1] for d in docs], pa.int32()),
            "doc_id": pa.array([d[2] for d in docs], pa.int64()),
        }
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def generate_dataset(name: str, spec: RealTextSpec, out_dir: Path) -> dict[str, Any]:
    out_dir = Path(out_dir)
    built = build(spec)
    counts = {}
    for split in ("train", "val"):
        write_parquet(out_dir / f"{split}.parquet", built[split])
        counts[split] = {
            "documents": len(built[split]),
            "bytes": sum(len(d[0].encode("utf-8")) for d in built[split]),
        }
    truth = {
        "version": 1,
        "dataset": name,
        "kind": spec.kind,
        "params": asdict(spec),
        "floor_bits_per_byte": None,
        "floor_definition": "unknown: real text has no known generating process",
        "python_version": sys.version.split()[0],
        "source_labels": built["packages"],
        "counts": counts,
    }
    write_json_atomic(out_dir / "ground_truth.json", truth)
    log.info(
        f"{name}: {counts['train']['documents']} train / {counts['val']['documents']} val files, "
        f"{counts['train']['bytes'] / 1e6:.2f} MB train from {built['root']}"
    )
    return truth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument(
        "--spec-json", required=True, help="the dataset's dict from the config, or @path to it"
    )
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        raw = json_arg(args.spec_json, what="--spec-json")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: dataset '{args.name}': {e}", file=sys.stderr)
        return 2
    try:
        spec = RealTextSpec.from_dict(raw)
        generate_dataset(args.name, spec, args.out)
    except RealTextError as e:
        print(f"error: dataset '{args.name}': {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
