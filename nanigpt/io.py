"""Atomic file output: every artifact of the graph appears whole or not at all.

Serves the contract "a killed job leaves no half file behind": writers go to a temporary file in
the destination folder, then `os.replace` it into place (atomic on POSIX filesystems).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nanigpt import fingerprint


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


class OutputWriteError(OSError):
    """An output could not be written (full disk, unwritable folder): one line saying what to do.

    A subclass of OSError with the original errno, so `except OSError` still catches it."""

    def __init__(self, path: str | os.PathLike, cause: OSError, what: str = "write"):
        super().__init__(cause.errno, cause.strerror)
        self.path = Path(path)
        self.cause = cause
        self.what = what

    def __str__(self) -> str:
        folder = self.path.parent
        reason = self.cause.strerror or str(self.cause)
        if self.cause.errno in _NO_SPACE:
            advice = f"free space on the disk holding {folder} and rerun"
        elif self.cause.errno in _NOT_WRITABLE:
            advice = f"make {folder} writable (or run from a writable working directory) and rerun"
        else:
            advice = "fix the cause and rerun"
        return (
            f"cannot {self.what} {self.path}: {reason}; {advice} (outputs already written are kept, a "
            f"killed training run resumes from its last checkpoint)"
        )


def _writable_errors(path: Path, error: OSError, what: str = "write") -> OSError:
    if error.errno in _NO_SPACE | _NOT_WRITABLE and not isinstance(error, OutputWriteError):
        return OutputWriteError(path, error, what)
    return error


def ensure_dir(path: str | os.PathLike) -> Path:
    """`mkdir -p path`, with an `OutputWriteError` naming the folder when it cannot be made."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _writable_errors(path, e, "create the folder") from e
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, else delete it.

    `keep_suffix` gives the temporary file `path`'s suffix (for writers that pick the format
    from it, like Altair's `chart.save`).
    `OSError`s of a full disk or an unwritable folder become `OutputWriteError` (one line)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = path.suffix if keep_suffix else ".tmp"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as e:
        raise _writable_errors(path, e) from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp_path, path)
        fingerprint.note_output(path)  # its code record is written when the process exits
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        raise _writable_errors(path, e) from e
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read JSON with an error that names the file instead of a bare decoder traceback."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from e


def json_arg(text: str, what: str = "JSON argument") -> Any:
    """A JSON value from the command line: the JSON itself, or `@path` to a file holding it (the
    graph's spec files, `nanigpt.graph.specs`). Bad JSON or a missing file is a ValueError or
    FileNotFoundError that names `what`."""
    if text.startswith("@"):
        return read_json(text[1:], what=f"{what} file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} is not valid JSON ({e}); pass JSON or @path") from e
