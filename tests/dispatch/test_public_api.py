"""The public names of ``dispatch`` and ``workers`` are the documented ones, and cheap to import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dispatch
import workers


def test_dispatch_exports() -> None:
    assert sorted(dispatch.__all__) == [
        "ApprovalRefused", "Dispatcher", "EventStream", "FleetError", "FleetSettings",
        "FleetUnavailable", "Job", "JobInfo", "JobNotFound", "JobRefused", "JobSpec",
        "JobSpecError", "JobTimeout", "PendingCall", "ReduceError", "Reduction", "SettingsError",
    ]  # fmt: skip
    for name in dispatch.__all__:
        assert getattr(dispatch, name).__doc__, f"dispatch.{name} needs a docstring"


def test_workers_exports() -> None:
    assert sorted(workers.__all__) == ["app", "create_app", "get_app"]


def test_importing_dispatch_needs_no_celery_and_reads_no_environment() -> None:
    code = (
        "import sys, dispatch, rho_agent\n"
        "assert 'celery' not in sys.modules and 'redis' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def imported_packages(package: Path) -> dict[str, set[str]]:
    """Top-level packages each module of ``package`` imports (anywhere in the module)."""
    found: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(package.parent))] = names
    return found


def test_layers_go_one_way() -> None:
    root = Path(dispatch.__file__).resolve().parents[1]
    for module, names in imported_packages(root / "dispatch").items():
        assert "workers" not in names, f"{module} imports workers (dispatch sends tasks by name)"
    for module, names in imported_packages(root / "rho_agent").items():
        if module.startswith("rho_agent/cli/"):
            continue  # the command line is the edge that wires the layers together
        assert not names & {"dispatch", "workers", "celery", "kombu"}, module
