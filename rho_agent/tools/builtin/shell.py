"""The ``bash`` tool: run a command line on the backend, under the profile's shell policy."""

from __future__ import annotations

from pydantic import Field

from rho_agent.backends.base import CommandResult
from rho_agent.errors import PermissionDenied, ToolError
from rho_agent.permissions.profile import ShellPolicy
from rho_agent.permissions.shell.policy import readonly_violation
from rho_agent.tools._schema import parse_arguments
from rho_agent.tools._truncate import MAX_OUTPUT_CHARS, truncate_middle
from rho_agent.tools.base import ToolInvocation, ToolOutput
from rho_agent.tools.builtin._common import Arguments, BuiltinTool

_DESCRIPTION = """\
Run a shell command with bash in the working directory and return its output (stdout and stderr \
together) and, if it failed, its exit code.
- Each call starts a fresh shell: `cd` and variables do not carry over; chain steps with `&&`.
- Stdin is closed, so commands that wait for input get end-of-file instead; pass flags such as \
`--yes` or `-y` to programs that would ask.
- A command that runs past the timeout is killed with all the processes it started.
- A background process (`cmd &`) keeps running after the call returns; send its output to a \
file (`cmd > log 2>&1 &`), because the pipe this tool reads is closed when the shell exits.
- Long output is cut in the middle; filter it (grep, head, tail) when you need a specific part.
- To look at files, prefer the read, grep, glob and list tools."""

_READONLY_NOTE = """
- Only read-only commands are allowed in this session (for example ls, cat, head, tail, grep, \
rg, find, wc, sort, sed -n, awk, jq, git log/status/diff/show). Every part of a pipeline, \
`;`/`&&` chain and `$(...)` is checked; output redirection is only allowed to /dev/null."""


class BashArguments(Arguments):
    command: str = Field(description="The command line to run with `bash -c`.")
    timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seconds before the command and its child processes are killed. "
        "The permission profile sets the default and the maximum (usually 120).",
    )


class BashTool(BuiltinTool):
    """Runs ``bash -c COMMAND`` in the working dir; ``policy`` only tailors the description."""

    name = "bash"
    arguments = BashArguments

    def __init__(self, policy: ShellPolicy = "allowed") -> None:
        super().__init__()
        self.description = _DESCRIPTION + (_READONLY_NOTE if policy == "readonly" else "")

    async def handle(self, invocation: ToolInvocation) -> ToolOutput:
        args = parse_arguments(BashArguments, invocation.arguments, self.name)
        if not args.command.strip():
            raise ToolError("the command is empty")
        _check_policy(invocation, args.command)
        limit = invocation.profile.shell_timeout
        timeout = min(args.timeout or limit, limit)
        result = await invocation.backend.run_command(
            args.command, timeout=timeout, profile=invocation.profile
        )
        return _output(result, timeout)


def _check_policy(invocation: ToolInvocation, command: str) -> None:
    profile = invocation.profile
    if profile.shell == "none":
        raise PermissionDenied(
            f"the permission profile {profile.name!r} does not allow running shell commands"
        )
    if profile.shell == "readonly":
        reason = readonly_violation(command)
        if reason is not None:
            raise PermissionDenied(
                f"the permission profile {profile.name!r} only allows read-only commands: {reason}"
            )


def _output(result: CommandResult, timeout: float) -> ToolOutput:
    text = truncate_middle(result.output) if result.output else "(no output)"
    if result.timed_out:
        text += (
            f"\n[timed out after {timeout:g} s; the command and its child processes were killed]"
        )
    elif result.exit_code != 0:
        text += f"\n[exit code {result.exit_code}]"
    return ToolOutput(
        text,
        success=result.exit_code == 0 and not result.timed_out,
        metadata={
            "exit_code": result.exit_code,
            "timed_out": result.timed_out,
            "truncated": len(result.output) > MAX_OUTPUT_CHARS,
        },
    )
