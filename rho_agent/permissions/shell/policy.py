"""The readonly shell policy: is this command line unable to change anything?

Every simple command of the line is checked: each part of a pipeline or ``;``/``&&``/``||`` list,
subshells and groups, and the bodies of ``$(...)``, backticks and ``<(...)``/``>(...)``. A command
must be on an allowlist of read-only programs, and some are checked further (``find`` without
``-exec``/``-delete``, ``sed`` without ``-i`` or ``w``, ``git`` with reading subcommands only...).
Output may only be redirected to ``/dev/null``. Whatever the checker cannot understand is refused:
a refusal costs the model one more try, a false acceptance could cost the user their files.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rho_agent.permissions.shell.git import check_git
from rho_agent.permissions.shell.lex import Lexed, Operator, Redirect, ShellSyntaxError, Word, lex
from rho_agent.permissions.shell.programs import (
    Refused,
    Validator,
    any_arguments,
    check_awk,
    check_command_builtin,
    check_date,
    check_double_bracket,
    check_find,
    check_printf,
    check_read,
    check_sed,
    check_uniq,
    only_flags,
    refuse_options,
)

_MAX_NESTING = 8
_SAFE_TARGETS = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr"})
_OUTPUT_REDIRECTIONS = frozenset({">", ">>", ">|", "&>", "&>>", ">&"})
_PREFIX_KEYWORDS = frozenset(
    {"!", "{", "if", "then", "else", "elif", "do", "while", "until", "time"}
)
_CLOSING_KEYWORDS = frozenset({"}", "fi", "done"})
_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\+?=")
_SHELL_VARIABLE = re.compile(r"[a-z_][a-z0-9_]*")
_SAFE_ENVIRONMENT = frozenset(
    {"LANG", "LC_ALL", "LC_COLLATE", "LC_CTYPE", "LC_MESSAGES", "LC_NUMERIC", "LC_TIME"}
    | {"TZ", "NO_COLOR", "COLUMNS", "TERM"}
)


def readonly_violation(command: str) -> str | None:
    """Why ``command`` might change something (a sentence the model can act on), or None."""
    try:
        _check_source(command, 0)
    except Refused as refusal:
        return str(refusal)
    except ShellSyntaxError as exc:
        return f"the command could not be checked ({exc}), so it is refused"
    return None


def _check_source(source: str, nesting: int) -> None:
    if nesting > _MAX_NESTING:
        raise Refused("substitutions nested this deeply cannot be checked")
    lexed = lex(source)
    for body in lexed.substitutions:
        _check_source(body, nesting + 1)
    for segment in _segments(lexed):
        for item in segment:
            if isinstance(item, Redirect):
                _check_redirect(item)
        _check_command([item for item in segment if isinstance(item, Word)])


def _segments(lexed: Lexed) -> list[list[Word | Redirect]]:
    """The simple commands of a command line, split at control operators."""
    segments: list[list[Word | Redirect]] = [[]]
    for token in lexed.tokens:
        if not isinstance(token, Operator):
            segments[-1].append(token)
            continue
        if token.text.startswith(";;") or token.text == ";&":
            raise Refused("case statements are not supported in readonly mode")
        if token.text == "(" and any(isinstance(item, Word) for item in segments[-1]):
            raise Refused("function definitions and arrays are not allowed in readonly mode")
        segments.append([])
    return [segment for segment in segments if segment]


def _check_redirect(redirect: Redirect) -> None:
    op, target = redirect.op, redirect.target
    if op in ("<<", "<<-"):
        raise Refused(
            "here-documents (<<) are not supported in readonly mode; "
            "use a here-string (<<<) or pipe from echo/printf"
        )
    if op == "<>":
        raise Refused("'<>' opens a file for writing")
    if op not in _OUTPUT_REDIRECTIONS:
        return
    static = not target.dynamic and not target.glob
    if op == ">&" and static and (target.text.isdigit() or target.text == "-"):
        return
    if not static or target.text not in _SAFE_TARGETS:
        raise Refused(
            f"output redirection to {target.raw} would write a file; in readonly mode output "
            "may only be redirected to /dev/null"
        )


def _check_command(words: list[Word]) -> None:
    index = 0
    while index < len(words) and words[index].raw in _PREFIX_KEYWORDS:
        index += 2 if words[index].raw == "time" and _raw(words, index + 1) == "-p" else 1
    words = words[index:]
    if not words:
        return
    if words[0].raw in _CLOSING_KEYWORDS:
        if len(words) > 1:
            raise Refused(f"unexpected words after {words[0].raw!r}")
        return
    if words[0].raw == "for":
        _check_for(words)
        return
    assignments = 0
    while assignments < len(words) and _ASSIGNMENT.match(words[assignments].raw):
        assignments += 1
    command = words[assignments:]
    for word in words[:assignments]:
        _check_assignment(word, exported=bool(command))
    if command:
        check_simple(command)


def _raw(words: Sequence[Word], index: int) -> str | None:
    return words[index].raw if index < len(words) else None


def _check_for(words: list[Word]) -> None:
    if len(words) < 2 or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", words[1].raw):
        raise Refused("only 'for NAME in WORDS' loops are supported in readonly mode")
    if len(words) > 2 and words[2].raw != "in":
        raise Refused("only 'for NAME in WORDS' loops are supported in readonly mode")


def _check_assignment(word: Word, *, exported: bool) -> None:
    match = _ASSIGNMENT.match(word.raw)
    assert match is not None
    name = match.group(1)
    if name in _SAFE_ENVIRONMENT or (not exported and _SHELL_VARIABLE.fullmatch(name)):
        return
    where = "for a command" if exported else ""
    raise Refused(
        f"setting {name} {where}is not allowed in readonly mode (it could change what programs "
        f"do); allowed: lowercase shell variables and {', '.join(sorted(_SAFE_ENVIRONMENT))}"
    )


def check_simple(words: Sequence[Word]) -> None:
    """Check one command and its arguments against the allowlist."""
    first = words[0]
    if first.dynamic or first.glob:
        raise Refused(f"the command name {first.raw} must be written out in readonly mode")
    name = first.text
    if "/" in name:
        raise Refused(f"run {name.rsplit('/', 1)[-1]} by name, not by path, in readonly mode")
    validator = COMMANDS.get(name)
    if validator is None:
        raise Refused(
            f"{name!r} is not one of the read-only commands allowed here "
            f"({', '.join(sorted(COMMANDS))})"
        )
    validator(name, words[1:])


def _xargs(name: str, args: Sequence[Word]) -> None:
    index = 0
    while index < len(args) and args[index].text.startswith("-"):
        word = args[index]
        if word.dynamic or word.glob:
            raise Refused(f"xargs: {word.raw} is only known at run time")
        text = word.text
        if text == "--":
            index += 1
            break
        if text in _XARGS_FLAGS:
            index += 1
        elif text in _XARGS_VALUE_OPTIONS:
            index += 2
        elif text[:2] in _XARGS_VALUE_OPTIONS or text.split("=", 1)[0] in _XARGS_VALUE_OPTIONS:
            index += 1
        else:
            raise Refused(f"xargs option {text} is not allowed in readonly mode")
    command = args[index:]
    if not command:
        return
    if command[0].text not in PLAIN_COMMANDS:
        raise Refused(
            f"xargs may only run commands whose options cannot write (such as grep, wc, cat, "
            f"head, ls) in readonly mode, not {command[0].raw}: the arguments xargs adds could "
            "turn into options"
        )
    check_simple(command)


_XARGS_FLAGS = frozenset({"-0", "--null", "-r", "--no-run-if-empty", "-t", "--verbose", "-x"})
_XARGS_VALUE_OPTIONS = frozenset(
    {
        "-n",
        "-L",
        "-P",
        "-I",
        "-d",
        "-s",
        "-a",
        "--max-args",
        "--max-lines",
        "--max-procs",
        "--replace",
        "--delimiter",
        "--max-chars",
        "--arg-file",
    }
)


def _wrapper(flags: frozenset[str], value_options: frozenset[str], positional: int) -> Validator:
    """``timeout``/``nice``: options, ``positional`` plain values, then a command to check."""

    def check(name: str, args: Sequence[Word]) -> None:
        index = 0
        while index < len(args) and args[index].text.startswith("-"):
            text = args[index].text
            if args[index].dynamic or not (
                text in flags
                or text in value_options
                or text[:2] in value_options
                or text.split("=", 1)[0] in value_options
                or re.fullmatch(r"-\d+", text)
            ):
                raise Refused(f"{name} option {text} is not allowed in readonly mode")
            index += 2 if text in value_options else 1
        values = args[index : index + positional]
        if len(values) < positional or index + positional >= len(args):
            raise Refused(f"{name} needs a command to run")
        if any(value.dynamic for value in values):
            raise Refused(f"{name}: write its arguments out in readonly mode")
        check_simple(args[index + positional :])

    return check


PLAIN_COMMANDS = frozenset(
    """
    : [ b2sum base64 basename cat cd cksum cmp column comm cut df diff dirname dirs du echo
    egrep exit expand expr false fgrep fmt fold free getconf getfacl grep groups head hexdump id
    join jq locale ls lsblk lscpu lsof md5sum nl nproc numfmt od paste pgrep popd printenv
    ps pushd pwd readlink realpath rev seq set sha1sum sha224sum sha256sum sha384sum
    sha512sum sleep stat strings sum tac tail test tr true tty type uname unexpand uptime wait wc
    whereis which who whoami zcat
    """.split()  # noqa: SIM905 - a word list reads better than 81 quoted lines
)
"""Commands no argument can make write a file or run another program."""

COMMANDS: dict[str, Validator] = {
    **dict.fromkeys(PLAIN_COMMANDS, any_arguments),
    "[[": check_double_bracket,
    "awk": check_awk,
    "command": check_command_builtin,
    "date": check_date,
    "env": only_flags(frozenset({"-0", "--null"})),
    "file": refuse_options("C", ("--compile",), "it writes a compiled magic file"),
    "find": check_find,
    "gawk": check_awk,
    "git": check_git,
    "hostname": only_flags(frozenset({"-f", "-s", "-d", "-i", "-I", "-A", "-a", "--fqdn"})),
    "mawk": check_awk,
    "nice": _wrapper(frozenset(), frozenset({"-n", "--adjustment"}), 0),
    "printf": check_printf,
    "read": check_read,
    "rg": refuse_options("", ("--pre", "--hostname-bin"), "it runs another program"),
    "sed": check_sed,
    "sort": refuse_options("o", ("--output", "--compress-program"), "it writes or runs a file"),
    "timeout": _wrapper(
        frozenset({"--preserve-status", "--foreground", "-v", "--verbose"}),
        frozenset({"-s", "-k", "--signal", "--kill-after"}),
        1,
    ),
    "tree": refuse_options("oR", ("--output",), "it writes files"),
    "uniq": check_uniq,
    "xargs": _xargs,
}
"""Every command readonly mode runs, with the check its arguments get."""
