"""The built-in tools, end to end on a backend: part of ``BackendContract``.

The handlers come from ``build_registry(profile)``, as an Agent gets them, and are called with the
backend under test, so every backend runs the same tool behaviour and permission checks.
"""

from __future__ import annotations

import pytest

from rho_agent.backends.base import ExecutionBackend
from rho_agent.errors import PermissionDenied, ToolError
from rho_agent.permissions.profile import load_profile
from rho_agent.tools import ToolInvocation, ToolOutput, build_registry
from rho_agent.tools.paths import PathResolver

from ._support import at, put


async def call(
    backend: ExecutionBackend, tool: str, profile: str = "developer", **arguments: object
) -> ToolOutput:
    """Call the built-in ``tool`` the way a session does."""
    loaded = load_profile(profile)
    handler = build_registry(loaded).get(tool)
    assert handler is not None, f"profile {profile} has no {tool} tool"
    invocation = ToolInvocation(
        call_id="call-1", tool_name=tool, arguments=dict(arguments), backend=backend, profile=loaded
    )
    return await handler.handle(invocation)


async def exists(backend: ExecutionBackend, relative: str) -> bool:
    try:
        await backend.read_file(at(backend, relative))
    except FileNotFoundError:
        return False
    return True


class ToolContract:
    async def test_bash_runs_in_the_working_dir(self, backend: ExecutionBackend) -> None:
        await put(backend, "hello.txt", "hi there\n")
        output = await call(backend, "bash", command="cat hello.txt")
        assert output.content == "hi there\n"
        assert output.success and output.metadata["exit_code"] == 0

    async def test_bash_reports_failures_and_timeouts(self, backend: ExecutionBackend) -> None:
        failed = await call(backend, "bash", command="echo oops; exit 3")
        assert failed.content == "oops\n\n[exit code 3]"
        assert failed.success is False
        slow = await call(backend, "bash", command="sleep 30", timeout=1)
        assert "[timed out after 1 s" in slow.content
        assert slow.metadata["timed_out"] is True

    async def test_bash_cuts_long_output_in_the_middle(self, backend: ExecutionBackend) -> None:
        output = await call(backend, "bash", command="seq 1 40000")
        assert output.content.startswith("1\n2\n3\n")
        assert output.content.rstrip().endswith("40000")
        assert "characters omitted" in output.content
        assert len(output.content) < 31_000
        assert output.metadata["truncated"] is True

    async def test_write_read_and_edit(self, backend: ExecutionBackend) -> None:
        text = "".join(f"line {number}\n" for number in range(1, 6))
        written = await call(backend, "write", path="notes/file.txt", content=text)
        assert written.content == "Wrote 5 lines (35 bytes) to notes/file.txt."
        read = await call(backend, "read", path="notes/file.txt", offset=2, limit=2)
        assert read.content.splitlines()[:2] == ["     2\tline 2", "     3\tline 3"]
        assert "offset=4" in read.content
        edited = await call(
            backend, "edit", path="notes/file.txt", old_string="line 3\n", new_string="three\n"
        )
        assert edited.content.startswith("Replaced 1 occurrence in notes/file.txt.")
        data = await backend.read_file(at(backend, "notes/file.txt"))
        assert data.decode() == text.replace("line 3\n", "three\n")

    async def test_edit_needs_a_unique_exact_match(self, backend: ExecutionBackend) -> None:
        await put(backend, "dup.txt", "same\nsame\n")
        with pytest.raises(ToolError, match="occurs 2 times"):
            await call(backend, "edit", path="dup.txt", old_string="same", new_string="x")
        with pytest.raises(ToolError, match="not found"):
            await call(backend, "edit", path="dup.txt", old_string="absent", new_string="x")
        output = await call(
            backend, "edit", path="dup.txt", old_string="same", new_string="x", replace_all=True
        )
        assert output.metadata["replacements"] == 2
        assert await backend.read_file(at(backend, "dup.txt")) == b"x\nx\n"

    async def test_glob_grep_and_list_show_relative_paths(self, backend: ExecutionBackend) -> None:
        await put(backend, "src/app.py", "def main():\n    return 42\n")
        await put(backend, "README.md", "# app\n")
        globbed = await call(backend, "glob", pattern="**/*.py")
        assert globbed.content == "src/app.py"
        grepped = await call(backend, "grep", pattern=r"return \d+", include="*.py")
        assert grepped.content == "src/app.py:2: return 42"
        listed = await call(backend, "list")
        assert listed.content == "README.md  (6 bytes)\nsrc/"

    async def test_missing_files_are_tool_errors(self, backend: ExecutionBackend) -> None:
        with pytest.raises(ToolError, match="no such file"):
            await call(backend, "read", path="absent.txt")
        with pytest.raises(ToolError, match="no such file"):
            await call(backend, "list", path="absent")

    async def test_readonly_bash_refuses_writes(self, backend: ExecutionBackend) -> None:
        with pytest.raises(PermissionDenied, match="only allows read-only commands"):
            await call(backend, "bash", "readonly", command="echo x > made.txt")
        with pytest.raises(PermissionDenied):
            await call(backend, "bash", "readonly", command="ls; touch made.txt")
        assert not await exists(backend, "made.txt")
        listed = await call(backend, "bash", "readonly", command="ls -a")
        assert listed.success

    async def test_readonly_has_no_write_tools(self, backend: ExecutionBackend) -> None:
        names = build_registry("readonly").names
        assert "write" not in names and "edit" not in names
        assert {"bash", "read", "glob", "grep", "list"} <= set(names)

    async def test_developer_writes_stay_in_the_working_dir(
        self, backend: ExecutionBackend
    ) -> None:
        outside = backend.working_dir.rstrip("/") + "-outside.txt"
        for path in ("../escape.txt", outside, "sub/../../escape.txt"):
            with pytest.raises(PermissionDenied, match="outside the working directory"):
                await call(backend, "write", path=path, content="x")
        await put(backend, "kept.txt", "a")
        with pytest.raises(PermissionDenied):
            await call(backend, "edit", path=outside, old_string="a", new_string="b")
        assert not await exists(backend, "../escape.txt")

    async def test_developer_symlinks_cannot_lead_outside(self, backend: ExecutionBackend) -> None:
        if not isinstance(backend, PathResolver):
            pytest.skip("the backend has no realpath(); symlink escapes are not detected")
        await backend.run_command("ln -s / rootlink", timeout=10)
        with pytest.raises(PermissionDenied, match="resolves to"):
            await call(backend, "write", path="rootlink/tmp/escaped.txt", content="x")
