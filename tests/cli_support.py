"""Running the real ``rho-agent`` command in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-c", "from rho_agent.cli import main; main()"]


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test's environment without model or broker settings, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OPENAI_", "RHO_AGENT_"))
    }
    env["RHO_AGENT_SESSIONS_DIR"] = str(tmp_path / "sessions")
    return {**env, **extra}


def rho(
    args: list[str],
    env: dict[str, str],
    *,
    cwd: Path | None = None,
    stdin: str | None = None,
    timeout: float = 90,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, cwd=cwd, input=stdin, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def start_rho(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """``rho-agent`` in its own process group, so a test can send it SIGINT as a terminal's
    Ctrl+C does (to the whole group)."""
    return subprocess.Popen(
        [*CLI, *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip


def one_line_error(stderr: str) -> str:
    """The ``error:`` line of a failed command; fails the test on a traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]
