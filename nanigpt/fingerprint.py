"""Code fingerprints: was this result built by the code that is here now? (the graph's contract)

Snakemake reruns a job when its inputs, params or shell command change, not when the Python
behind the command does: an edit of the model or the trainer would leave every result in place,
built by other code, silently. So every output records the code it was built with: each path
written through `nanigpt.io.atomic_path` (every artifact of the graph) is noted, and when the
process exits, one record per output is written under the working directory,

    .nanigpt/code/<output path>.json   {"output", "mtime_ns", "modules": {name: {"file", "sha256"}}}

listing every `nanigpt.*` module (and the `nanigpt_rs` extension) the process had loaded, with the
sha256 of its source file. Only the modules a job imported count, not the whole tree: editing the
MoE layer marks the MoE runs' outputs stale, not the tokenizer's. `python -m nanigpt.graph.runtable stale`
compares the records with the files as they are now. Outputs outside the working directory (unit
tests writing to temporary folders) are not recorded.

Hashing is a hint, not a trigger: a change that should rerun a study is made explicit by bumping
its sweep's `version:` in the config (a Snakemake param of its runs).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

RECORDS = Path(".nanigpt") / "code"
PACKAGES = ("nanigpt", "nanigpt_rs")

_written: dict[Path, None] = {}  # absolute output paths, in write order
_registered = False


def note_output(path: str | os.PathLike) -> None:
    """Remember that this process wrote `path`; its code record is written at exit."""
    global _registered
    _written[Path(path).absolute()] = None
    if not _registered:
        atexit.register(record_outputs)
        _registered = True


def file_sha256(path: str | os.PathLike) -> str | None:
    """The sha256 of a file's bytes (None when it does not exist)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def loaded_code() -> dict[str, dict[str, str]]:
    """Every loaded `nanigpt.*` / `nanigpt_rs` module with a source file: {name: {file, sha256}}."""
    code = {}
    for name, module in sorted(sys.modules.items()):
        if name.split(".")[0] not in PACKAGES:
            continue
        file = getattr(module, "__file__", None)
        if not file or not os.path.isfile(file):
            continue
        code[name] = {"file": str(Path(file).resolve()), "sha256": file_sha256(file)}
    return code


def record_path(output: Path, workdir: Path) -> Path | None:
    """Where the record of `output` lives, or None when `output` lies outside `workdir`."""
    try:
        relative = output.resolve().relative_to(workdir.resolve())
    except ValueError:
        return None
    return workdir / RECORDS / f"{relative}.json"


def record_outputs(workdir: str | os.PathLike | None = None) -> list[Path]:
    """Write the code record of every output this process wrote (at exit); returns the records."""
    workdir = Path(workdir) if workdir is not None else Path.cwd()
    outputs = [p for p in _written if p.exists()]
    if not outputs:
        return []
    code = loaded_code()
    written = []
    for output in outputs:
        dest = record_path(output, workdir)
        if dest is None:
            continue
        record = {
            "output": str(output.resolve().relative_to(workdir.resolve())),
            "mtime_ns": output.stat().st_mtime_ns,
            "argv": sys.argv,
            "modules": code,
        }
        try:  # never let bookkeeping fail a job that built its outputs
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
            with os.fdopen(fd, "w") as f:
                json.dump(record, f, indent=1, sort_keys=True)
            os.replace(tmp, dest)
        except OSError as e:
            print(f"nanigpt.fingerprint: warning: cannot record the code of {output}: {e}",
                  file=sys.stderr)  # fmt: skip
            continue
        written.append(dest)
    _written.clear()
    return written


def read_records(workdir: str | os.PathLike = ".") -> list[dict]:
    """Every code record under `workdir` whose output still exists."""
    root = Path(workdir) / RECORDS
    records = []
    for path in sorted(root.rglob("*.json")) if root.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (Path(workdir) / record["output"]).exists():
            records.append(record)
    return records


def changed_modules(record: dict, cache: dict[str, str | None] | None = None) -> list[str]:
    """The modules of `record` whose source file differs now (or is gone)."""
    cache = {} if cache is None else cache
    changed = []
    for name, entry in record["modules"].items():
        file = entry["file"]
        if file not in cache:
            cache[file] = file_sha256(file)
        if cache[file] != entry["sha256"]:
            changed.append(name)
    return changed


def stale_outputs(workdir: str | os.PathLike = ".") -> dict[str, list[str]]:
    """{output: changed modules} for every recorded output built by code that has changed."""
    cache: dict[str, str | None] = {}
    stale = {}
    for record in read_records(workdir):
        changed = changed_modules(record, cache)
        if changed:
            stale[record["output"]] = changed
    return stale
