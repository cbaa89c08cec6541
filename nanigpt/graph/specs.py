"""Settings and file lists as files: a job's, a run's or a dataset's spec, a rule's list of inputs.

Serves issue 26 ("job specs as files", "no printed command longer than 300 characters"): a rule's
command line names a file instead of carrying the settings as inline JSON or its inputs one by one,
so that no command is too long to read or to start (Linux caps one argument at 128 KiB: a WSD job
of about 140 runs passed inline failed with E2BIG), and a printed command shows the command. Two
kinds of file, one writer:

- a spec (`write_spec`): settings as one line of canonical JSON, read by the CLI's `--job @PATH`,
  `--run-config @PATH`, `--spec-json @PATH`, `--held-out @PATH`;
- an argument list (`write_args`): one argument a line, the format of argparse's
  `fromfile_prefix_chars="@"`: a CLI that takes a list of files (`nanigpt.scaling.aggregate`,
  `nanigpt.plots.moe`, ...) reads `@PATH` as those files, and plain arguments still work by hand.

Specs are written while the rule files are read, before Snakemake builds its DAG, and are inputs
of the rules that read them: a file whose content is unchanged is left alone, so its modification
time changes only with its content, Snakemake reruns exactly the jobs whose settings changed, and a
no-op dry run writes nothing. An argument list is a rule's param, written when its job is planned:
its content is the rule's inputs, whose change already reruns it (`workflow/rules/common.smk`).
Writes are atomic.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nanigpt.io import write_text_atomic


def spec_text(settings: Any) -> str:
    """The canonical text of a spec: sorted keys, compact, one line."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":")) + "\n"


def args_text(args: Iterable[Any]) -> str:
    """An argument list as argparse's `@PATH` reads it: one argument a line."""
    lines = [str(a) for a in args]
    bad = [a for a in lines if "\n" in a or "\r" in a or not a]
    if bad:
        raise ValueError(f"an argument file holds one non-empty line per argument; got {bad[0]!r}")
    return "".join(f"{a}\n" for a in lines)


def write_if_changed(path: str | Path, text: str) -> bool:
    """Write `text` to `path` (atomically) unless it already holds exactly it; True when written."""
    path = Path(path)
    try:
        if path.read_text() == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass  # missing or unreadable: write it
    write_text_atomic(path, text)
    return True


def write_spec(path: str | Path, settings: Any) -> bool:
    """Write `settings` to `path` as a spec unless it already holds exactly them; True when
    written."""
    return write_if_changed(path, spec_text(settings))


def write_args(path: str | Path, args: Iterable[Any]) -> bool:
    """Write `args` to `path` as an argument list unless it already holds exactly them; True when
    written."""
    return write_if_changed(path, args_text(args))
