"""Settings as files: a job's or a run's spec, rewritten only when its settings change.

Serves issue 26 ("job specs as files"): a rule's command line names its spec file (the CLIs take
`--job @PATH` and `--run-config @PATH`) instead of carrying the settings as inline JSON, so that
no command is too long to read or to start (Linux caps one argument at 128 KiB: a WSD job of about
140 runs passed inline failed with E2BIG), and a printed command shows the command. The planner
writes every spec when it plans (`workflow/rules/jobs.smk`, `train.smk`); a spec whose content is
unchanged is left alone, so its modification time changes only with the settings, Snakemake reruns
exactly the jobs whose settings changed (the spec is an input), and a no-op dry run writes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nanigpt.io import write_text_atomic


def spec_text(settings: Any) -> str:
    """The canonical text of a spec: sorted keys, compact, one line."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":")) + "\n"


def write_spec(path: str | Path, settings: Any) -> bool:
    """Write `settings` to `path` (atomically) unless it already holds exactly them; True when
    written."""
    path, text = Path(path), spec_text(settings)
    try:
        if path.read_text() == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass  # missing or unreadable: write it
    write_text_atomic(path, text)
    return True
