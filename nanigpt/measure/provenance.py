"""Provenance: which config, code, packages and device produced a number? (every project question)

Every run folder records where its numbers come from, so results from different commits, machines or
package versions are never silently compared:
- `config_hash`: sha256 of the run config as canonical JSON (sorted keys, no whitespace);
- `code_version`: the git commit (and whether the tree was dirty) when git is there, plus a sha256
  of the `nanigpt/` source files, which also identifies code copied to a machine without git;
- `packages`: versions of python, torch, numpy and the other libraries that shape the numbers;
- `device`: the accelerator name as CUDA reports it, or the CPU with its thread count.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # .../nanigpt
PACKAGES = ("torch", "numpy", "pyarrow", "polars", "triton", "nanigpt", "nanigpt-rs")
SOURCE_SUFFIXES = (".py", ".rs", ".toml")


def config_hash(config: dict[str, Any]) -> str:
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def source_hash(root: Path = PACKAGE_ROOT) -> str:
    """sha256 over the relative paths and contents of the package's source files, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in SOURCE_SUFFIXES and p.is_file()):
        if "__pycache__" in path.parts:
            continue
        digest.update(str(path.relative_to(root)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def code_version(root: Path = PACKAGE_ROOT) -> dict[str, Any]:
    """{"git_commit": str | None, "git_dirty": bool | None, "source_sha256": str}."""
    commit = _git(["rev-parse", "HEAD"], root)
    dirty = None
    if commit is not None:
        status = _git(["status", "--porcelain", "--", "."], root)
        dirty = None if status is None else bool(status)
    return {"git_commit": commit, "git_dirty": dirty, "source_sha256": source_hash(root)}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["torch_runtime"] = torch.__version__
    versions["cuda"] = torch.version.cuda
    return versions


def device_name(device: torch.device | str) -> str:
    """'NVIDIA H100 80GB HBM3' on a GPU; 'cpu (<processor>, N threads)' on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    processor = platform.processor() or platform.machine()
    return f"cpu ({processor}, {torch.get_num_threads()} threads)"


def collect_provenance(config: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    return {
        "config_hash": config_hash(config),
        "code_version": code_version(),
        "packages": package_versions(),
        "device": device_name(device),
    }
