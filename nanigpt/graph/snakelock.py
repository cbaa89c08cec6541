"""Stale Snakemake locks: can the README's command resume after `kill -9`? (the graph's contract)

Snakemake locks a working directory by writing `.snakemake/locks/*.lock` files that list the
inputs and outputs of the running instance, and deletes them when it exits. A process killed with
SIGKILL cannot delete them, so the next run stops with `LockException` until the user runs
`snakemake --unlock`. Snakemake records no owner in those files, so it cannot tell a stale lock
from a live one; this module adds the owner:

- `claim(workdir)` (the Snakefile's `onstart`, i.e. after Snakemake took its locks) writes
  `.snakemake/nanigpt-owners/{host}-{pid}.json` with the process's start time;
  `release(workdir)` (`onsuccess` / `onerror`) deletes it.
- `clear_stale_locks(workdir)` (run while the Snakefile is parsed, before Snakemake checks its
  locks) deletes the lock files only when it can prove nobody holds them: every owner recorded is
  a process of this host that no longer exists (a pid with another start time is another
  process), and no other live process on this host runs Snakemake or a `nanigpt.` job in this
  directory (which covers an instance between taking its locks and its `onstart`, and a training
  job orphaned by a killed Snakemake that still writes its run folder). Locks with no owner recorded, or an
  owner on another host (a shared filesystem), are left alone: then `snakemake --unlock` is still
  the user's call, as Snakemake says.

Linux only (`/proc`); elsewhere nothing is ever deleted.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

OWNERS = Path(".snakemake") / "nanigpt-owners"
LOCKS = Path(".snakemake") / "locks"


def _start_time(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (`/proc/PID/stat` field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is parenthesised and may hold spaces: split after its ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def _owner_path(workdir: Path, pid: int) -> Path:
    return Path(workdir) / OWNERS / f"{socket.gethostname()}-{pid}.json"


def claim(workdir: str | Path = ".") -> None:
    """Record this process as the owner of the locks Snakemake took in `workdir`."""
    pid = os.getpid()
    path = _owner_path(Path(workdir), pid)
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = {"host": socket.gethostname(), "pid": pid, "start_time": _start_time(pid)}
    path.write_text(json.dumps(owner) + "\n")


def release(workdir: str | Path = ".") -> None:
    _owner_path(Path(workdir), os.getpid()).unlink(missing_ok=True)


def _alive(owner: dict) -> bool:
    start = _start_time(int(owner["pid"]))
    return start is not None and start == owner.get("start_time")


def _other_snakemake_here(workdir: Path) -> bool:
    """Whether another live process of this host runs Snakemake, or a job of the graph (a
    `nanigpt.` CLI, e.g. a trainer orphaned by a killed Snakemake), with `workdir` as its cwd."""
    here = workdir.resolve()
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in (me, os.getppid()):
            continue
        try:
            if Path(os.readlink(proc / "cwd")) != here:
                continue
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"snakemake" in cmdline or b"nanigpt." in cmdline:
            return True
    return False


def clear_stale_locks(workdir: str | Path = ".") -> list[str]:
    """Delete `workdir`'s Snakemake locks if every recorded owner is provably dead.

    Returns the owners (`host-pid`) whose locks were removed; [] when nothing was removed."""
    workdir = Path(workdir)
    locks = sorted((workdir / LOCKS).glob("*.lock"))
    owner_files = sorted((workdir / OWNERS).glob("*.json"))
    if not locks or not owner_files or not Path("/proc/self/stat").exists():
        return []
    host = socket.gethostname()
    owners = []
    for path in owner_files:
        try:
            owner = json.loads(path.read_text())
        except (OSError, ValueError):
            return []  # unreadable: cannot prove anything
        if owner.get("host") != host or _alive(owner):
            return []
        owners.append(path)
    if _other_snakemake_here(workdir):
        return []
    for path in locks:
        path.unlink(missing_ok=True)
    for path in owners:
        path.unlink(missing_ok=True)
    return [path.stem for path in owners]
