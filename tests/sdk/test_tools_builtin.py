"""Built-in tool details on LocalBackend: schemas, arguments, limits, edge cases, profiles.

The behaviour every backend shares is in tests/contract; this file covers the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rho_agent.backends.local import LocalBackend
from rho_agent.errors import PermissionDenied, ToolError
from rho_agent.permissions.profile import BUILTIN_TOOL_NAMES, PermissionProfile, load_profile
from rho_agent.tools import ToolInvocation, ToolOutput, build_registry
from rho_agent.tools._truncate import truncate_middle
from rho_agent.tools.builtin import BashTool, builtin_handlers
from rho_agent.tools.builtin.search import split_literal_prefix
from rho_agent.tools.paths import display_path, is_within, resolve_path


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[LocalBackend]:
    local = LocalBackend(str(tmp_path / "work"))
    await local.start()
    try:
        yield local
    finally:
        await local.close()


@pytest.fixture
def work(backend: LocalBackend) -> Path:
    return Path(backend.working_dir)


async def call(
    backend: LocalBackend,
    tool: str,
    profile: str | PermissionProfile = "developer",
    **arguments: Any,
) -> ToolOutput:
    loaded = load_profile(profile)
    handler = build_registry("unrestricted").get(tool)
    assert handler is not None
    invocation = ToolInvocation("call-1", tool, arguments, backend, loaded)
    return await handler.handle(invocation)


# -- schemas and registries ----------------------------------------------------------------------


def test_every_builtin_has_a_clean_schema() -> None:
    registry = build_registry("unrestricted")
    assert registry.names == list(BUILTIN_TOOL_NAMES)
    for entry in registry.schemas():
        function = entry["function"]
        assert len(function["description"]) > 60
        parameters = function["parameters"]
        assert parameters["type"] == "object"
        assert parameters["additionalProperties"] is False
        assert "title" not in str(parameters)
        for name, spec in parameters["properties"].items():
            assert spec.get("description"), (function["name"], name)


def test_required_arguments() -> None:
    registry = build_registry("unrestricted")
    required = {handler.name: handler.parameters.get("required", []) for handler in registry}
    assert required == {
        "bash": ["command"],
        "read": ["path"],
        "write": ["path", "content"],
        "edit": ["path", "old_string", "new_string"],
        "glob": ["pattern"],
        "grep": ["pattern"],
        "list": [],
    }


@pytest.mark.parametrize(
    ("profile", "names"),
    [
        ("readonly", ["bash", "read", "glob", "grep", "list"]),
        ("developer", list(BUILTIN_TOOL_NAMES)),
        ("unrestricted", list(BUILTIN_TOOL_NAMES)),
        (PermissionProfile("quiet", shell="none"), ["read", "glob", "grep", "list"]),
        (
            PermissionProfile("picky", write="anywhere", tools=frozenset({"read", "edit"})),
            ["read", "edit"],
        ),
    ],
)
def test_registry_follows_the_profile(profile: str | PermissionProfile, names: list[str]) -> None:
    assert build_registry(profile).names == names


def test_default_registry_is_readonly() -> None:
    assert build_registry(None).names == build_registry("readonly").names


def test_readonly_bash_description_says_so() -> None:
    readonly = build_registry("readonly").get("bash")
    developer = build_registry("developer").get("bash")
    assert readonly is not None and developer is not None
    assert "Only read-only commands" in readonly.description
    assert "Only read-only commands" not in developer.description


def test_registries_are_independent() -> None:
    first = build_registry("developer")
    first.unregister("bash")
    assert "bash" in build_registry("developer")
    assert len(builtin_handlers(load_profile("developer"))) == 7


# -- arguments -----------------------------------------------------------------------------------


async def test_missing_argument_is_named(backend: LocalBackend) -> None:
    with pytest.raises(ToolError, match="missing required argument 'path'"):
        await call(backend, "read")


async def test_wrong_type_is_named(backend: LocalBackend) -> None:
    with pytest.raises(ToolError, match="argument 'offset'"):
        await call(backend, "read", path="x", offset="soon")
    with pytest.raises(ToolError, match="argument 'offset'"):
        await call(backend, "read", path="x", offset=0)


async def test_unexpected_argument_is_named(backend: LocalBackend) -> None:
    with pytest.raises(ToolError, match="unexpected argument 'force'"):
        await call(backend, "write", path="x", content="y", force=True)


async def test_home_paths_are_explained(backend: LocalBackend) -> None:
    with pytest.raises(ToolError, match="'~' is not expanded"):
        await call(backend, "read", path="~/notes.txt")


# -- bash ----------------------------------------------------------------------------------------


async def test_bash_rejects_an_empty_command(backend: LocalBackend) -> None:
    with pytest.raises(ToolError, match="empty"):
        await call(backend, "bash", command="  ")


async def test_bash_timeout_is_capped_by_the_profile(backend: LocalBackend) -> None:
    profile = PermissionProfile("short", shell="allowed", shell_timeout=0.5)
    started = time.monotonic()
    output = await call(backend, "bash", profile, command="sleep 20", timeout=100)
    assert output.metadata["timed_out"] is True
    assert time.monotonic() - started < 5


async def test_bash_without_shell_policy_is_denied(backend: LocalBackend) -> None:
    profile = PermissionProfile("quiet", shell="none")
    with pytest.raises(PermissionDenied, match="does not allow running shell commands"):
        await call(backend, "bash", profile, command="ls")


async def test_bash_no_output_is_said(backend: LocalBackend) -> None:
    output = await call(backend, "bash", command="true")
    assert output.content == "(no output)"


async def test_cancelling_a_bash_call_kills_it_promptly(backend: LocalBackend, work: Path) -> None:
    tool = BashTool()
    invocation = ToolInvocation(
        "call-1",
        "bash",
        {"command": "sleep 60 & echo $! > bg.pid; sleep 60"},
        backend,
        load_profile("developer"),
    )
    task = asyncio.create_task(tool.handle(invocation))
    pid_file = work / "bg.pid"
    for _ in range(100):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        await asyncio.sleep(0.05)
    pid = int(pid_file.read_text())
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1.0
    assert await asyncio.to_thread(_dead_within, pid, 2.0), "the background process survived"


def _dead_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


# -- read / write / edit -------------------------------------------------------------------------


async def test_read_refuses_binary_files(backend: LocalBackend, work: Path) -> None:
    (work / "data.bin").write_bytes(b"\x00\x01\x02")
    with pytest.raises(ToolError, match="binary file"):
        await call(backend, "read", path="data.bin")


async def test_read_empty_file_and_offset_past_end(backend: LocalBackend, work: Path) -> None:
    (work / "empty.txt").write_text("")
    assert (await call(backend, "read", path="empty.txt")).content == "empty.txt is empty."
    (work / "two.txt").write_text("a\nb\n")
    with pytest.raises(ToolError, match="has 2 lines"):
        await call(backend, "read", path="two.txt", offset=3)


async def test_read_cuts_long_lines_and_strips_crlf(backend: LocalBackend, work: Path) -> None:
    (work / "wide.txt").write_bytes(b"x" * 5000 + b"\r\nshort\r\n")
    lines = (await call(backend, "read", path="wide.txt")).content.splitlines()
    assert lines[0].endswith("[... line cut at 2000 characters]")
    assert len(lines[0]) < 2100
    assert lines[1] == "     2\tshort"


async def test_read_stops_at_the_output_limit(backend: LocalBackend, work: Path) -> None:
    (work / "big.txt").write_text("".join(f"{'y' * 99}\n" for _ in range(2000)))
    output = await call(backend, "read", path="big.txt")
    assert len(output.content) < 31_000
    last = output.metadata["last_line"]
    assert 250 < last < 2000
    assert f"call read with offset={last + 1}" in output.content


async def test_read_directory_is_explained(backend: LocalBackend, work: Path) -> None:
    (work / "sub").mkdir()
    with pytest.raises(ToolError, match="is a directory"):
        await call(backend, "read", path="sub")


async def test_edit_keeps_crlf_line_endings(backend: LocalBackend, work: Path) -> None:
    (work / "win.txt").write_bytes(b"one\r\ntwo\r\nthree\r\n")
    await call(backend, "edit", path="win.txt", old_string="one\ntwo", new_string="1\n2")
    assert (work / "win.txt").read_bytes() == b"1\r\n2\r\nthree\r\n"


async def test_edit_shows_the_changed_lines(backend: LocalBackend, work: Path) -> None:
    (work / "code.py").write_text("".join(f"line{number}\n" for number in range(1, 21)))
    output = await call(backend, "edit", path="code.py", old_string="line10", new_string="TEN")
    assert "    10\tTEN" in output.content
    assert "     7\tline7" in output.content and "    13\tline13" in output.content
    assert "line20" not in output.content


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [("", "x", "old_string is empty"), ("same", "same", "nothing to change")],
)
async def test_edit_rejects_pointless_edits(
    backend: LocalBackend, work: Path, old: str, new: str, message: str
) -> None:
    (work / "f.txt").write_text("same\n")
    with pytest.raises(ToolError, match=message):
        await call(backend, "edit", path="f.txt", old_string=old, new_string=new)


async def test_edit_errors_for_missing_and_binary_files(backend: LocalBackend, work: Path) -> None:
    with pytest.raises(ToolError, match="create it with the write tool"):
        await call(backend, "edit", path="new.txt", old_string="a", new_string="b")
    (work / "latin1.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(ToolError, match="not UTF-8"):
        await call(backend, "edit", path="latin1.txt", old_string="caf", new_string="bar")


async def test_write_onto_a_directory_is_a_tool_error(backend: LocalBackend, work: Path) -> None:
    (work / "sub").mkdir()
    with pytest.raises(ToolError, match="is a directory"):
        await call(backend, "write", path="sub", content="x")


async def test_write_anywhere_with_unrestricted(backend: LocalBackend, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "file.txt"
    output = await call(backend, "write", "unrestricted", path=str(target), content="hi")
    assert target.read_text() == "hi"
    assert str(target) in output.content


async def test_readonly_profile_refuses_write_tools(backend: LocalBackend, work: Path) -> None:
    with pytest.raises(PermissionDenied, match="does not allow changing files"):
        await call(backend, "write", "readonly", path="x.txt", content="x")
    with pytest.raises(PermissionDenied):
        await call(backend, "edit", "readonly", path="x.txt", old_string="a", new_string="b")
    assert not (work / "x.txt").exists()


async def test_read_confined_profile(backend: LocalBackend, tmp_path: Path, work: Path) -> None:
    (tmp_path / "secret.txt").write_text("secret")
    (work / "link").symlink_to(tmp_path)
    profile = PermissionProfile("boxed", read="working_dir")
    for path in (str(tmp_path / "secret.txt"), "../secret.txt", "link/secret.txt"):
        with pytest.raises(PermissionDenied, match="only allows tools to read files inside"):
            await call(backend, "read", profile, path=path)
    with pytest.raises(PermissionDenied):
        await call(backend, "grep", profile, pattern="secret", path="..")
    (work / "mine.txt").write_text("mine\n")
    assert (await call(backend, "read", profile, path="mine.txt")).content == "     1\tmine"


# -- glob / grep / list --------------------------------------------------------------------------


async def test_glob_patterns_with_leading_directories(
    backend: LocalBackend, work: Path, tmp_path: Path
) -> None:
    (tmp_path / "side").mkdir()
    (tmp_path / "side" / "a.cfg").write_text("")
    output = await call(backend, "glob", pattern="../side/*.cfg")
    assert output.content == str(tmp_path / "side" / "a.cfg")
    output = await call(backend, "glob", pattern=str(tmp_path / "side" / "*.cfg"))
    assert output.content == str(tmp_path / "side" / "a.cfg")
    output = await call(backend, "glob", pattern="*.none")
    assert output.content == "No files match '*.none' in the working directory."


async def test_glob_and_grep_say_when_results_are_cut(backend: LocalBackend, work: Path) -> None:
    for number in range(205):
        (work / f"f{number:03}.txt").write_text("hit\n")
    globbed = await call(backend, "glob", pattern="*.txt")
    assert globbed.content.count("\n") == 200
    assert "more than 200 files match" in globbed.content
    grepped = await call(backend, "grep", pattern="hit")
    assert "more than 100 matches" in grepped.content
    assert grepped.metadata["count"] == 100


async def test_grep_explains_bad_regexes_and_no_matches(backend: LocalBackend, work: Path) -> None:
    with pytest.raises(ToolError, match="invalid regular expression"):
        await call(backend, "grep", pattern="(unclosed")
    (work / "a.txt").write_text("alpha\n")
    output = await call(backend, "grep", pattern="beta")
    assert output.content == "No lines match 'beta' in the working directory."


async def test_grep_shortens_long_lines(backend: LocalBackend, work: Path) -> None:
    (work / "min.js").write_text("var a=1;" * 200 + "\n")
    output = await call(backend, "grep", pattern="var")
    assert output.content.endswith(" [...]")
    assert len(output.content) < 500


async def test_grep_skips_a_fifo_rather_than_hang(backend: LocalBackend, work: Path) -> None:
    (work / "a.txt").write_text("alpha\n")
    os.mkfifo(work / "pipe")  # opening it would wait for a writer forever
    try:
        output = await asyncio.wait_for(call(backend, "grep", pattern="alpha"), 5)
    finally:  # release a reader stuck in open(), so that a failure does not hang the tests
        with contextlib.suppress(OSError):
            os.close(os.open(work / "pipe", os.O_WRONLY | os.O_NONBLOCK))
    assert output.content == "a.txt:1: alpha"


async def test_list_empty_directory(backend: LocalBackend, work: Path) -> None:
    (work / "empty").mkdir()
    output = await call(backend, "list", path="empty")
    assert output.content == "empty is empty."


# -- helpers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("**/*.py", ("", "**/*.py")),
        ("src/**/*.py", ("src", "**/*.py")),
        ("../a/b/*.txt", ("../a/b", "*.txt")),
        ("/etc/*.conf", ("/etc", "*.conf")),
        ("/*.conf", ("/", "*.conf")),
        ("src/main.py", ("src", "main.py")),
        ("*.{ts,tsx}", ("", "*.{ts,tsx}")),
    ],
)
def test_split_literal_prefix(pattern: str, expected: tuple[str, str]) -> None:
    assert split_literal_prefix(pattern) == expected


def test_path_helpers() -> None:
    assert resolve_path("a/../b", "/proj") == "/proj/b"
    assert resolve_path("/etc/x", "/proj") == "/etc/x"
    assert is_within("/proj", "/proj") and is_within("/proj/a", "/proj/")
    assert not is_within("/projects", "/proj")
    assert is_within("/anything", "/")
    assert display_path("/proj/a/b", "/proj") == "a/b"
    assert display_path("/etc/x", "/proj") == "/etc/x"
    with pytest.raises(ToolError, match="empty"):
        resolve_path(" ", "/work")
    with pytest.raises(ToolError, match="NUL"):
        resolve_path("a\x00b", "/work")


def test_truncate_middle_keeps_head_and_tail() -> None:
    text = "".join(f"line {number}\n" for number in range(10_000))
    cut = truncate_middle(text, 1000)
    assert cut.startswith("line 0\n") and cut.endswith("line 9999\n")
    assert "characters omitted" in cut
    assert len(cut) < 1100
    assert truncate_middle("short", 1000) == "short"
