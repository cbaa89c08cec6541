"""One check of a mapping's keys: every unknown key named by its path, with the nearest known key.

Serves DESIGN.md's contract "bad input gets a clear error: the key, the value, what was expected"
(issue 27): the config's schema check (`nanigpt.graph.config`), a run's model and parallelism
(`nanigpt.model.config`, `nanigpt.parallel.setting`) and the dataset specs
(`nanigpt.data.synthetic`, `nanigpt.data.realtext`) word an unknown key alike:

    unknown key 'model.n_layers' (did you mean 'n_layer'?); allowed keys here: d_model, ...

The hint is the standard library's closest match (`difflib.get_close_matches`: Ratcliff/Obershelp
similarity of at least 0.6). Standard library only, so the torch-free planner and the run layer
both import it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


def key_path(parts: Sequence[object] | str) -> str:
    """`["training", "lr"]` -> `training.lr` (a string is already a path); the top level is
    `<top level>`."""
    if isinstance(parts, str):
        return parts or "<top level>"
    return ".".join(str(p) for p in parts) or "<top level>"


def unknown_keys_message(
    given: Iterable[object], allowed: Iterable[str], where: Sequence[object] | str = ()
) -> str | None:
    """None when every key of `given` is in `allowed`; else one message naming each unknown key
    by its path under `where` (a dotted string or a sequence of parts), the nearest allowed key as
    a hint, and the allowed keys."""
    allowed = sorted(allowed)
    unknown = sorted({str(k) for k in given} - set(allowed))
    if not unknown:
        return None
    prefix = [where] if isinstance(where, str) and where else list(where) if where else []
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        parts.append(f"unknown key '{key_path([*prefix, key])}'{hint}")
    return f"{'; '.join(parts)}; allowed keys here: {', '.join(allowed)}"


def check_keys(
    given: Iterable[object],
    allowed: Iterable[str],
    where: Sequence[object] | str = (),
    error: type[Exception] = ValueError,
) -> None:
    """Raise `error` with `unknown_keys_message` when `given` holds a key not in `allowed`."""
    message = unknown_keys_message(given, allowed, where)
    if message is not None:
        raise error(message)
