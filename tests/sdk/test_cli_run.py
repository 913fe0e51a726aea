"""``rho-agent run``: streamed answer, tool calls shown, exit codes, offline mode, Ctrl+C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from rho_agent.testing import ScriptedModelServer, behaviour, error, text, tool_call

CLI = [sys.executable, "-c", "from rho_agent.cli import main; main()"]


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "RHO_AGENT_SESSIONS_DIR": str(tmp_path / "sessions"), **extra}
    env.pop("OPENAI_BASE_URL", None)
    return env


def rho(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60)


def test_run_streams_the_answer_and_shows_tools(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    model_server.responder = behaviour("tool-then-answer")
    done = rho(
        ["run", "look around", "--base-url", model_server.base_url, "--working-dir", str(tmp_path),
         "--profile", "readonly", "--model", "gpt-5-nano"],
        cli_env(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Done:")
    assert "→ list" in done.stderr and "completed" in done.stderr
    body = model_server.requests[0].body
    assert body["model"] == "gpt-5-nano"
    assert "write" not in [t["function"]["name"] for t in body["tools"]]


def test_run_uses_a_config_file_and_can_resume(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(f"system_prompt: You are terse.\nbase_url: {model_server.base_url}\n")
    model_server.responder = behaviour("echo")
    first = rho(["run", "first", "--config", str(config)], cli_env(tmp_path))
    assert first.returncode == 0, first.stderr
    session_id = first.stderr.split("session ", 1)[1].split()[0]
    second = rho(
        ["run", "second", "--config", str(config), "--resume", session_id], cli_env(tmp_path)
    )
    assert second.returncode == 0, second.stderr
    messages = model_server.requests[-1].body["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == ["first", "second"]
    assert messages[0]["content"] == "You are terse."


def test_run_exits_non_zero_on_error(model_server: ScriptedModelServer, tmp_path: Path) -> None:
    model_server.script(error(401, "invalid api key"))
    done = rho(["run", "hi", "--base-url", model_server.base_url], cli_env(tmp_path))
    assert done.returncode == 1
    assert "invalid api key" in done.stderr


def test_offline_mode_without_a_key_reads_the_file_the_prompt_names(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    env.pop("OPENAI_API_KEY", None)
    (tmp_path / "README.md").write_text("\n# Demo project\n\nIt demonstrates.\n")
    done = rho(["run", "Summarise README.md", "--working-dir", str(tmp_path)], env)
    assert done.returncode == 0, done.stderr
    assert "offline mode" in done.stderr and "→ read {'path': 'README.md'}" in done.stderr
    assert done.stdout.strip() == 'Summary: README.md has 4 lines and starts with "# Demo project".'


def test_ctrl_c_cancels_cleanly(model_server: ScriptedModelServer, tmp_path: Path) -> None:
    model_server.script(text("too slow", delay=30))
    process = subprocess.Popen(
        [*CLI, "run", "wait", "--base-url", model_server.base_url],
        env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not model_server.requests and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 1
    assert "cancelled" in stderr


def test_resume_keeps_the_sessions_own_config(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = behaviour("echo")
    env = cli_env(tmp_path)
    args = ["--base-url", model_server.base_url, "--profile", "readonly", "--model", "gpt-5-nano"]
    first = rho(["run", "first", *args], env)
    assert first.returncode == 0, first.stderr
    session_id = first.stderr.split("session ", 1)[1].split()[0]
    second = rho(["run", "second", "--resume", session_id], env)
    assert second.returncode == 0, second.stderr
    body = model_server.requests[-1].body
    assert body["model"] == "gpt-5-nano"
    assert "write" not in [t["function"]["name"] for t in body["tools"]]


def test_run_with_the_daytona_backend_uploads_and_cleans_up(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    from rho_agent.testing.fake_daytona import FakeDaytonaServer

    source = tmp_path / "src"
    source.mkdir()
    (source / "app.py").write_text("print('hi')\n")
    model_server.script(
        tool_call("bash", {"command": "ls /home/daytona/src"}), text("The sandbox has app.py")
    )
    with FakeDaytonaServer() as daytona:
        env = cli_env(tmp_path, **daytona.env())
        done = rho(
            ["run", "what is uploaded?", "--base-url", model_server.base_url,
             "--backend", "daytona", "--upload", f"{source}:/home/daytona/src"],
            env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert len(daytona.created) == 1 and daytona.running == []
    tool_result = model_server.requests[1].body["messages"][-1]
    assert tool_result["role"] == "tool" and "app.py" in tool_result["content"]


def test_approval_is_asked_on_the_terminal(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    import pty

    model_server.script(
        tool_call("write", {"path": "a.txt", "content": "yes"}),
        tool_call("write", {"path": "b.txt", "content": "no"}),
        text("asked twice"),
    )
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [*CLI, "run", "write two files", "--base-url", model_server.base_url,
         "--working-dir", str(tmp_path), "--profile", "developer", "--approve"],
        env=cli_env(tmp_path), stdin=terminal, stdout=subprocess.PIPE, stderr=terminal, text=True,
    )  # fmt: skip
    os.close(terminal)
    try:
        shown = b""
        for answer in (b"y\n", b"n\n"):
            shown = _read_until(controller, b"Allow write", shown)
            os.write(controller, answer)
        stdout, _ = process.communicate(timeout=30)
        shown = _read_until(controller, b"completed", shown)
    finally:
        process.kill()
        os.close(controller)
    assert process.returncode == 0, shown
    assert stdout.strip() == "asked twice"
    assert (tmp_path / "a.txt").read_text() == "yes" and not (tmp_path / "b.txt").exists()
    assert b"blocked" in shown


def _read_until(controller: int, marker: bytes, seen: bytes) -> bytes:
    """Read the terminal until ``marker`` shows up once more than in ``seen``."""
    import select

    wanted = seen.count(marker) + 1
    deadline = time.monotonic() + 20
    while seen.count(marker) < wanted:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{marker!r} never showed; the terminal showed {seen!r}"
        if select.select([controller], [], [], remaining)[0]:
            seen += os.read(controller, 4096)
    return seen


def test_the_prompt_comes_from_stdin_or_a_file(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = behaviour("echo")
    base = ["--base-url", model_server.base_url, "--working-dir", str(tmp_path)]
    env = cli_env(tmp_path)
    piped = subprocess.run(
        [*CLI, "run", "-", *base], env=env, input="from stdin\nsecond line\n",
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.startswith("Echo: from stdin\nsecond line")
    (tmp_path / "prompt.md").write_text("# Task\nfrom a file", encoding="utf-8")
    filed = rho(["run", f"@{tmp_path / 'prompt.md'}", *base], env)
    assert filed.returncode == 0, filed.stderr
    assert filed.stdout.startswith("Echo: # Task\nfrom a file")
    assert model_server.requests[-1].body["messages"][-1]["content"] == "# Task\nfrom a file"
    literal = rho(["run", "@@handle please", *base], env)
    assert literal.stdout.startswith("Echo: @handle please")
    missing = rho(["run", f"@{tmp_path / 'nope.md'}", *base], env)
    assert missing.returncode == 2
    assert "cannot read the prompt file" in missing.stderr and "Traceback" not in missing.stderr


def test_an_unreachable_model_endpoint_exits_3_and_says_why(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    done = rho(
        ["run", "hi", "--base-url", f"http://127.0.0.1:{closed}/v1"],
        cli_env(tmp_path, OPENAI_API_KEY="sk-test"),
    )
    assert done.returncode == 3, done.stderr
    assert "cannot reach the model API" in done.stderr


def test_an_unknown_backend_is_refused_by_name(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = behaviour("tool-then-answer")
    done = rho(
        ["run", "look around", "--base-url", model_server.base_url, "--backend", "docker"],
        cli_env(tmp_path),
    )
    assert done.returncode == 2, done.stderr
    assert "'docker'" in done.stderr and "local or daytona" in done.stderr
    assert model_server.requests == [], "nothing runs on a backend that was mistyped"


def test_a_tool_that_raises_is_one_line_without_a_traceback_unless_debug(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = behaviour("tool-then-answer")
    args = ["run", "look", "--base-url", model_server.base_url, "--backend", "daytona"]
    env = cli_env(tmp_path)
    for name in [key for key in env if key.startswith("DAYTONA_")]:
        del env[name]  # the sandbox cannot start: the tool raises BackendError
    done = rho(args, env)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "tool list raised: BackendError: no Daytona credentials" in done.stderr
    debug = rho(["--debug", *args], env)
    assert "Traceback" in debug.stderr


def test_a_base_url_holding_a_password_fails_saying_why_without_echoing_it(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    url = model_server.base_url.replace("http://", "http://proxy:hunter2@")
    done = rho(["run", "hi", "--base-url", url], cli_env(tmp_path, OPENAI_API_KEY="sk-test"))
    assert done.returncode == 1, done.stderr
    said = " ".join(done.stderr.split())  # the terminal wraps the line
    assert "holds a user name or password" in said and "OPENAI_API_KEY" in said
    assert "hunter2" not in done.stderr and "Traceback" not in done.stderr
    assert model_server.requests == []


def test_a_prompt_argument_that_is_not_utf8_is_refused(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    args = [*CLI, "run", "--base-url", model_server.base_url]
    done = subprocess.run(
        [*(arg.encode() for arg in args), b"caf\xe9"],  # a Latin-1 terminal's bytes
        env=cli_env(tmp_path), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "not valid Unicode text" in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr and model_server.requests == []
