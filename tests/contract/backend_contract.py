"""The ExecutionBackend contract: every backend runs these same tests.

To check a backend, subclass ``BackendContract`` in a ``test_*.py`` module and give it a
``backend`` fixture yielding a started backend whose working dir is a fresh, empty directory::

    class TestMyBackend(BackendContract):
        @pytest.fixture
        async def backend(self) -> AsyncIterator[ExecutionBackend]:
            backend = MyBackend(...)
            await backend.start()
            try:
                yield backend
            finally:
                await backend.close()

The tests reach the backend only through the protocol (files are made with ``write_file`` or
``run_command``), so they run unchanged against a remote sandbox. They assume a Linux machine
(``/proc`` tells whether a process is still alive). Besides the protocol's docstrings they pin:

- ``run_command``: stdout and stderr in the order written; the shell's exit code; ``cwd`` defaults
  to the working dir; stdin is closed; after a timeout ``timed_out`` is true and every process of
  the command is dead; a background process left running does not hold the call up; cancelling
  the awaiting task kills the command's processes within a second.
- ``glob`` returns absolute paths of files (not directories), sorted; ``*`` stays within a path
  segment, ``**/`` spans any number of directories, ``{a,b}`` alternates; ``.git`` is skipped.
- ``grep`` returns absolute paths and 1-based line numbers, lines without their newline; ``path``
  may be a file or a directory; binary files, ``.git`` and symlinks met while walking a directory
  are skipped (they may lead outside it); the pattern is only data.
- Missing paths raise ``FileNotFoundError``; listing a file raises ``NotADirectoryError``.

The tool handlers then run end to end on the backend, so the built-in tools are exercised on
every backend too (see ``ToolContract``).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from rho_agent.backends.base import ExecutionBackend

from ._support import SLOW, at, put, read_pid, wait_dead
from .tool_contract import ToolContract


class CommandContract:
    """``run_command``: output, exit codes, working dir, stdin, timeouts and cancellation."""

    async def test_output_is_interleaved_in_write_order(self, backend: ExecutionBackend) -> None:
        result = await backend.run_command("echo out; echo err >&2; echo out2", timeout=SLOW)
        assert result.output == "out\nerr\nout2\n"
        assert result.exit_code == 0
        assert result.timed_out is False

    async def test_exit_code_is_reported(self, backend: ExecutionBackend) -> None:
        result = await backend.run_command("echo failing; exit 7", timeout=SLOW)
        assert result.exit_code == 7
        assert result.output == "failing\n"

    async def test_runs_in_the_working_dir_by_default(self, backend: ExecutionBackend) -> None:
        await put(backend, "marker.txt", "here\n")
        result = await backend.run_command("cat marker.txt", timeout=SLOW)
        assert result.output == "here\n"

    async def test_cwd_overrides_the_directory(self, backend: ExecutionBackend) -> None:
        await put(backend, "sub/inner.txt", "inner\n")
        result = await backend.run_command("cat inner.txt", timeout=SLOW, cwd=at(backend, "sub"))
        assert result.output == "inner\n"

    async def test_stdin_is_closed(self, backend: ExecutionBackend) -> None:
        started = time.monotonic()
        result = await backend.run_command("cat; echo done", timeout=30)
        assert result.output == "done\n"
        assert time.monotonic() - started < SLOW

    async def test_invalid_utf8_is_replaced(self, backend: ExecutionBackend) -> None:
        result = await backend.run_command(r"printf 'a\377b'", timeout=SLOW)
        assert result.output == "a\ufffdb"

    async def test_large_output_does_not_block(self, backend: ExecutionBackend) -> None:
        result = await backend.run_command(
            "head -c 3000000 /dev/zero | tr '\\0' a; echo; echo end", timeout=30
        )
        assert result.exit_code == 0 and not result.timed_out
        assert result.output.startswith("aaaa")
        assert result.output.endswith("end\n")

    @pytest.mark.timeout(60)
    async def test_timeout_kills_the_whole_tree(self, backend: ExecutionBackend) -> None:
        started = time.monotonic()
        result = await backend.run_command(
            "sleep 60 & echo $! > child.pid; echo $$ > shell.pid; sleep 60", timeout=1
        )
        assert result.timed_out is True
        assert time.monotonic() - started < 1 + SLOW
        for name in ("child.pid", "shell.pid"):
            assert await wait_dead(backend, await read_pid(backend, name)), name

    @pytest.mark.timeout(60)
    async def test_background_process_does_not_hang(self, backend: ExecutionBackend) -> None:
        started = time.monotonic()
        result = await backend.run_command("sleep 60 & echo $! > bg.pid; echo started", timeout=30)
        elapsed = time.monotonic() - started
        pid = await read_pid(backend, "bg.pid")
        await backend.run_command(f"kill {pid}", timeout=SLOW)
        assert result.output == "started\n"
        assert result.exit_code == 0 and not result.timed_out
        assert elapsed < SLOW

    @pytest.mark.timeout(60)
    async def test_cancel_kills_the_tree_promptly(self, backend: ExecutionBackend) -> None:
        task = asyncio.create_task(
            backend.run_command(
                "sleep 60 & echo $! > child.pid; echo $$ > shell.pid; sleep 60", timeout=60
            )
        )
        child = await read_pid(backend, "child.pid")
        shell = await read_pid(backend, "shell.pid")
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 1.0
        assert await wait_dead(backend, child)
        assert await wait_dead(backend, shell)


class FileContract:
    """``read_file``, ``write_file`` and ``list_dir``."""

    async def test_write_then_read_round_trips_bytes(self, backend: ExecutionBackend) -> None:
        data = bytes(range(256)) * 4
        path = await put(backend, "deep/er/file.bin", data)
        assert await backend.read_file(path) == data

    async def test_write_replaces_the_whole_file(self, backend: ExecutionBackend) -> None:
        path = await put(backend, "file.txt", "a long first version\n")
        await backend.write_file(path, b"short\n")
        assert await backend.read_file(path) == b"short\n"

    async def test_read_missing_file_raises(self, backend: ExecutionBackend) -> None:
        with pytest.raises(FileNotFoundError):
            await backend.read_file(at(backend, "missing.txt"))

    async def test_list_dir_is_sorted_with_kinds_and_sizes(self, backend: ExecutionBackend) -> None:
        await put(backend, "b.txt", "abc")
        await put(backend, "a/inside.txt", "x")
        await put(backend, ".hidden", "")
        entries = await backend.list_dir(backend.working_dir)
        assert [entry.name for entry in entries] == [".hidden", "a", "b.txt"]
        kinds = {entry.name: entry.is_dir for entry in entries}
        assert kinds == {".hidden": False, "a": True, "b.txt": False}
        assert next(entry.size for entry in entries if entry.name == "b.txt") == 3

    async def test_list_dir_errors(self, backend: ExecutionBackend) -> None:
        path = await put(backend, "file.txt", "x")
        with pytest.raises(FileNotFoundError):
            await backend.list_dir(at(backend, "missing"))
        with pytest.raises(NotADirectoryError):
            await backend.list_dir(path)


class SearchContract:
    """``glob`` and ``grep``."""

    @pytest.fixture
    async def tree(self, backend: ExecutionBackend) -> ExecutionBackend:
        files = {
            "top.py": "print('top')\n",
            "src/a.py": "import os\nx = 1\n# TODO fix\n",
            "src/deep/b.py": "nothing here\n-e TODO as data\n",
            "src/c.txt": "TODO later\n",
            "docs/readme.md": "# Readme\n",
            ".git/hooks/x.py": "TODO in git\n",
        }
        for relative, text in files.items():
            await put(backend, relative, text)
        await put(backend, "src/blob.bin", b"TODO\x00\x01\x02")
        return backend

    async def test_glob_star_stays_in_one_directory(self, tree: ExecutionBackend) -> None:
        assert await tree.glob("*.py", tree.working_dir, limit=100) == [at(tree, "top.py")]
        assert await tree.glob("src/*.py", tree.working_dir, limit=100) == [at(tree, "src/a.py")]

    async def test_glob_double_star_recurses_and_skips_git(self, tree: ExecutionBackend) -> None:
        found = await tree.glob("**/*.py", tree.working_dir, limit=100)
        assert found == [at(tree, "src/a.py"), at(tree, "src/deep/b.py"), at(tree, "top.py")]

    async def test_glob_braces_and_files_only(self, tree: ExecutionBackend) -> None:
        found = await tree.glob("**/*.{md,txt}", tree.working_dir, limit=100)
        assert found == [at(tree, "docs/readme.md"), at(tree, "src/c.txt")]
        assert await tree.glob("*", tree.working_dir, limit=100) == [at(tree, "top.py")]

    async def test_glob_under_a_subdirectory(self, tree: ExecutionBackend) -> None:
        found = await tree.glob("**/*.py", at(tree, "src"), limit=100)
        assert found == [at(tree, "src/a.py"), at(tree, "src/deep/b.py")]

    async def test_glob_limit_and_missing_root(self, tree: ExecutionBackend) -> None:
        assert len(await tree.glob("**/*", tree.working_dir, limit=2)) == 2
        with pytest.raises(FileNotFoundError):
            await tree.glob("*", at(tree, "missing"), limit=10)

    async def test_grep_finds_lines_in_text_files(self, tree: ExecutionBackend) -> None:
        matches = await tree.grep("TODO", tree.working_dir, include=None, limit=100)
        found = sorted((match.path, match.line_number, match.line) for match in matches)
        assert found == [
            (at(tree, "src/a.py"), 3, "# TODO fix"),
            (at(tree, "src/c.txt"), 1, "TODO later"),
            (at(tree, "src/deep/b.py"), 2, "-e TODO as data"),
        ]

    async def test_grep_include_and_regex(self, tree: ExecutionBackend) -> None:
        matches = await tree.grep("TODO", tree.working_dir, include="*.py", limit=100)
        assert sorted(match.path for match in matches) == [
            at(tree, "src/a.py"),
            at(tree, "src/deep/b.py"),
        ]
        matches = await tree.grep(r"x\s*=\s*\d", tree.working_dir, include=None, limit=100)
        assert [(match.path, match.line_number) for match in matches] == [(at(tree, "src/a.py"), 2)]

    async def test_grep_patterns_are_never_flags(self, tree: ExecutionBackend) -> None:
        matches = await tree.grep("-e", tree.working_dir, include=None, limit=100)
        assert [(match.path, match.line_number) for match in matches] == [
            (at(tree, "src/deep/b.py"), 2)
        ]
        assert await tree.grep("--help", tree.working_dir, include=None, limit=100) == []

    async def test_grep_a_single_file_and_limit(self, tree: ExecutionBackend) -> None:
        matches = await tree.grep("o", at(tree, "src/a.py"), include=None, limit=100)
        assert [match.line_number for match in matches] == [1]
        assert len(await tree.grep(".", tree.working_dir, include=None, limit=2)) == 2

    async def test_grep_does_not_follow_symlinks(self, tree: ExecutionBackend) -> None:
        await put(tree, "outside/secret.txt", "TOKEN=1\n")
        await tree.run_command(
            "mkdir inside && ln -s ../outside/secret.txt inside/file.txt "
            "&& ln -s ../outside inside/dir",
            timeout=SLOW,
        )
        assert await tree.grep("TOKEN", at(tree, "inside"), include=None, limit=10) == []

    async def test_grep_missing_path(self, tree: ExecutionBackend) -> None:
        with pytest.raises(FileNotFoundError):
            await tree.grep("x", at(tree, "missing"), include=None, limit=10)


class BackendContract(CommandContract, FileContract, SearchContract, ToolContract):
    """Everything an ``ExecutionBackend`` must do; see the module docstring for how to use it."""
