"""A cache for planning: how can `snakemake -n` on an unchanged graph answer in about a second?

Planning an IsoFLOP sweep needs each model's counted training FLOPs per token
(`nanigpt.model.flops.count`), which imports torch (2-5 s on a loaded 2-core machine) for
numbers that change only when the model code does. `cached(kind, key, compute)` keeps such
values in `$NANIGPT_CACHE_DIR/plan.json` (default `~/.cache/nanigpt/`) with the fingerprint of the
code that computed them (`nanigpt.fingerprint`: every `nanigpt` module loaded by then, and the
torch version): an entry is used only while all those files hash the same, so an edit of the
FLOP counter recomputes, and a stale value is never served. Writes are atomic; concurrent
planners may lose each other's new entries, never corrupt the file.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from nanigpt import fingerprint

PACKAGE = Path(__file__).resolve().parents[1]  # this checkout's nanigpt/
_memo: dict[str, str | None] = {}  # file -> sha256, once per process
_loaded: dict[str, Any] | None = None


def cache_path() -> Path:
    root = os.environ.get("NANIGPT_CACHE_DIR") or Path.home() / ".cache" / "nanigpt"
    return Path(root) / "plan.json"


@functools.cache  # once per process: each lookup reads the installed packages' metadata (~3 ms)
def _torch_version() -> str:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "none"


def _read() -> dict[str, Any]:
    global _loaded
    if _loaded is None:
        try:
            _loaded = json.loads(cache_path().read_text())
        except (OSError, ValueError):
            _loaded = {}
    return _loaded


def _fresh(entry: dict[str, Any]) -> bool:
    for file, sha in entry.get("code", {}).items():
        if file not in _memo:
            _memo[file] = fingerprint.file_sha256(file)
        if _memo[file] != sha:
            return False
    return entry.get("torch") == _torch_version()


def _write(cache: dict[str, Any]) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as f:  # keys unsorted: a cached config keeps its sweeps' order
            json.dump(cache, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written only costs time


def cached(kind: str, key: str, compute: Callable[[], Any]) -> Any:
    """`compute()` (a JSON value), or the cached value of (`kind`, `key`) if its code is unchanged."""
    cache = _read()
    # One cache file serves every checkout on the machine; an entry is this checkout's own (the
    # code that computed it elsewhere may differ from ours, though each is unchanged there).
    key = f"{PACKAGE}:{key}"
    entry = cache.get(kind, {}).get(key)
    if entry is not None and _fresh(entry):
        return copy.deepcopy(entry["value"])  # callers may change what they get
    value = compute()
    code = {m["file"]: m["sha256"] for m in fingerprint.loaded_code().values()}
    stored = {"value": copy.deepcopy(value), "code": code, "torch": _torch_version()}
    cache.setdefault(kind, {})[key] = stored
    _memo.update(code)
    _write(cache)
    return value


def _no_gpu_device_files() -> bool:
    """True when this machine shows no NVIDIA (or WSL GPU) device files: torch then sees no CUDA."""
    import glob

    return not glob.glob("/dev/nvidia[0-9]*") and not os.path.exists("/dev/dxg")


def hardware_slug(device: str) -> str:
    """`nanigpt.analysis.ceilings.device_slug` without importing torch where the answer is "cpu"
    (`training.device: cpu`, or `auto` on a machine with no GPU device files)."""
    if device == "cpu" or (device == "auto" and _no_gpu_device_files()):
        return "cpu"
    from nanigpt.analysis.ceilings import device_slug  # imports torch

    return device_slug(device)
