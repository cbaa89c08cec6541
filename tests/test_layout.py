"""The layout holds the architecture (issue 27): no import cycles in nanigpt/, and the graph layer
(`nanigpt.graph`, what the Snakefile imports to plan) runs without torch."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from nanigpt.graph.config import REPO_ROOT, load_config, resolve_runs
from nanigpt.graph.jobs import plan_jobs

PACKAGE = REPO_ROOT / "nanigpt"
CONFIGS = ("default", "smoke", "h100", "h200")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the nanigpt modules it imports}, from the source: every import statement,
    those inside functions included; `from pkg import name` counts `pkg.name` where that is a
    module, else `pkg`."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_import_graph_of_nanigpt_has_no_cycle():
    graph = import_graph()
    assert "nanigpt.graph.config" in graph and len(graph) > 50
    assert (
        "nanigpt.training.checkpoint.torch_format"
        in graph["nanigpt.training.checkpoint.rust_format"]
    )
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_find_cycle_finds_one_made_by_an_import_inside_a_function():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_run_layer_never_imports_the_graph():
    graph = import_graph()
    run_layer = [m for m in graph if m.startswith("nanigpt.training") or m == "nanigpt.train"]
    leaks = {m: sorted(t for t in graph[m] if t.startswith("nanigpt.graph")) for m in run_layer}
    assert not {m: t for m, t in leaks.items() if t}


# Plans every shipped config with `import torch` refused, in a fresh plan cache (so nothing is
# taken from an earlier process that had torch), and prints them as JSON.
_PLAN_WITHOUT_TORCH = """
import importlib, json, pkgutil, sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is hidden from this process (import of {name})")
        return None

sys.meta_path.insert(0, NoTorch())
import nanigpt.graph
for info in pkgutil.iter_modules(nanigpt.graph.__path__, "nanigpt.graph."):
    importlib.import_module(info.name)  # everything the Snakefile imports
from nanigpt.graph.config import load_config, resolve_runs
from nanigpt.graph.jobs import plan_jobs

plans = {}
for name in sys.argv[1:]:
    config = load_config(f"workflow/config/{name}.yaml")
    runs = resolve_runs(config)
    plans[name] = {"runs": runs, "jobs": plan_jobs(config, runs)}
assert "torch" not in sys.modules
print(json.dumps(plans))
"""


def test_every_shipped_config_plans_without_torch_and_plans_the_same(tmp_path):
    env = {**os.environ, "NANIGPT_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-c", _PLAN_WITHOUT_TORCH, *CONFIGS],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    without_torch = json.loads(out.stdout)
    for name in CONFIGS:
        config = load_config(REPO_ROOT / "workflow" / "config" / f"{name}.yaml")
        runs = resolve_runs(config)
        normal = json.loads(json.dumps({"runs": runs, "jobs": plan_jobs(config, runs)}))
        assert without_torch[name] == normal, name
        assert list(without_torch[name]["runs"]) == list(normal["runs"])  # the same order too
