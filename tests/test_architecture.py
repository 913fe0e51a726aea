"""The layout's promises: no import cycles, a light embedded mode, documented imports that work.

The layer contracts themselves (workers -> dispatch -> rho_agent, no Celery in the SDK, an engine
that never imports the fleet) are import-linter contracts in pyproject.toml, run by ``.ci/run``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rho_agent", "dispatch", "workers")


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_no_import_cycles() -> None:
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    assert import_cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for module in ("a", "b", "c"):
        graph.add_module(module)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="a")
    graph.add_import(importer="b", imported="c")
    assert import_cycles(graph) == [["a", "b"]]


def test_embedded_mode_loads_none_of_the_fleet(tmp_path: Path) -> None:
    """A program that runs jobs in-process never imports Redis, Celery or ``dispatch.fleet``."""
    code = f"""
import sys
from dispatch import Dispatcher
from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer, behaviour

with ScriptedModelServer(behaviour("echo")) as server, Dispatcher() as dispatcher:
    config = AgentConfig(base_url=server.base_url, working_dir={str(tmp_path)!r})
    [result] = dispatcher.gather(dispatcher.map(["hello"], config))
    assert result.status == "completed", result
heavy = sorted(
    name for name in sys.modules
    if name.split(".")[0] in ("celery", "kombu", "redis") or name.startswith("dispatch.fleet")
)
assert not heavy, heavy
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=ROOT)


def documented_imports() -> set[str]:
    """Every ``from rho_agent/dispatch/workers... import ...`` line in the README, docs and seed."""
    sources = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    seed = ROOT.parent / "shared" / "seed-python-sdk.md"
    if seed.exists():
        sources.append(seed)
    pattern = re.compile(r"^\s*(from (?:rho_agent|dispatch|workers)[\w.]* import [\w, ]+)$", re.M)
    return {match for path in sources for match in pattern.findall(path.read_text("utf-8"))}


def test_every_documented_import_works() -> None:
    statements = documented_imports()
    assert len(statements) >= 5, statements  # the pattern still finds the docs' imports
    code = "\n".join(sorted(statements))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=ROOT)


SUMMARISED = ("rho_agent/testing/", "rho_agent/cli/", "rho_agent/model/", "rho_agent/tools/")
"""Subpackages that docs/architecture.md describes in one row rather than module by module."""


def test_docs_architecture_names_every_module() -> None:
    """A newcomer finds the module for any concept in one step: every module has its line."""
    text = (ROOT / "docs" / "architecture.md").read_text("utf-8")
    missing = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if path.name == "__init__.py" or relative.startswith(SUMMARISED):
                continue
            inner = relative.split("/", 1)[1]
            if f"`{inner}`" not in text and f"`{path.stem}`" not in text and path.name not in text:
                missing.append(relative)
    assert missing == []
