"""Readonly checks for git: reading subcommands pass, anything that writes or runs programs not.

``-c`` and ``--exec-path`` are refused because config can name programs git runs (pagers, diff
drivers, fsmonitor hooks); ``branch``/``tag``/``config``/``stash``... are allowed only in their
listing forms.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rho_agent.permissions.shell.lex import Word
from rho_agent.permissions.shell.programs import Refused, Validator, find_option, static_options


def check_git(name: str, args: Sequence[Word]) -> None:
    """Allow git's reading subcommands; refuse config overrides (``-c``) and writing options."""
    static_options(name, args)
    index = 0
    while index < len(args) and args[index].text.startswith("-"):
        text = args[index].text
        if text == "-C":
            index += 2
        elif text in _GIT_GLOBAL_FLAGS or text.startswith(_GIT_GLOBAL_VALUES):
            index += 1
        else:
            raise Refused(
                f"git option {text} is not allowed in readonly mode (-c and --exec-path can "
                "make git run other programs)"
            )
    if index >= len(args):
        return
    subcommand, rest = args[index].text, args[index + 1 :]
    writing = find_option(rest, "O" if subcommand == "grep" else "", _GIT_WRITING_OPTIONS)
    if writing is not None:
        raise Refused(f"git {subcommand} {writing} writes files or runs programs")
    if subcommand in _GIT_READING:
        return
    check = _GIT_CONDITIONAL.get(subcommand)
    if check is None:
        allowed = sorted(_GIT_READING | set(_GIT_CONDITIONAL))
        raise Refused(
            f"git {subcommand} is not allowed in readonly mode (allowed: {', '.join(allowed)})"
        )
    check(subcommand, rest)


_GIT_GLOBAL_FLAGS = frozenset(
    {
        "--no-pager",
        "-P",
        "--no-optional-locks",
        "--literal-pathspecs",
        "--glob-pathspecs",
        "--noglob-pathspecs",
        "--icase-pathspecs",
        "--no-replace-objects",
        "--bare",
        "--version",
        "--help",
    }
)
_GIT_GLOBAL_VALUES = ("--git-dir=", "--work-tree=", "--namespace=")
_GIT_WRITING_OPTIONS = ("--output", "--ext-diff", "--open-files-in-pager")
_GIT_READING = frozenset(
    """
    annotate blame cat-file check-attr check-ignore cherry count-objects describe diff
    diff-files diff-index diff-tree for-each-ref grep log ls-files ls-remote ls-tree
    merge-base name-rev range-diff rev-list rev-parse shortlog show show-branch show-ref status
    verify-commit verify-tag version whatchanged
    """.split()  # noqa: SIM905 - a word list reads better than 33 quoted lines
)


def _git_listing(flags: frozenset[str], values: frozenset[str]) -> Validator:
    """``git branch``/``git tag``: listing is fine, a name without ``--list`` creates one."""

    def check(subcommand: str, args: Sequence[Word]) -> None:
        listing = False
        named = False
        index = 0
        while index < len(args):
            text = args[index].text
            if text in ("-l", "--list"):
                listing = True
            elif text in values:
                index += 1
            elif text in flags or text.split("=", 1)[0] in values or re.fullmatch(r"-n\d*", text):
                pass
            elif text.startswith("-"):
                raise Refused(f"git {subcommand} {text} is not allowed in readonly mode")
            else:
                named = True
            index += 1
        if named and not listing:
            raise Refused(
                f"git {subcommand} NAME creates a {subcommand}; add --list to list matching ones"
            )

    return check


def _git_first_word(allowed: frozenset[str], *, bare: bool) -> Validator:
    """Subcommands with their own subcommands: only the listed (reading) ones."""

    def check(subcommand: str, args: Sequence[Word]) -> None:
        words = [arg.text for arg in args if not arg.text.startswith("-")]
        if (not words and bare) or (words and words[0] in allowed):
            return
        shown = " | ".join(sorted(allowed))
        raise Refused(f"only git {subcommand} {shown} is allowed in readonly mode")

    return check


def _git_config(subcommand: str, args: Sequence[Word]) -> None:
    texts = {arg.text for arg in args}
    first = args[0].text if args else ""
    reading = bool(texts & _GIT_CONFIG_READING) or first in ("get", "list")
    if not reading or texts & _GIT_CONFIG_WRITING:
        raise Refused(
            "only reading git config (--get, --get-all, --get-regexp, --list, get, list) is "
            "allowed in readonly mode"
        )


_GIT_CONFIG_READING = frozenset(
    {"--get", "--get-all", "--get-regexp", "--get-urlmatch", "--list", "-l", "--get-color"}
)
_GIT_CONFIG_WRITING = frozenset(
    {
        "--add",
        "--unset",
        "--unset-all",
        "--replace-all",
        "--rename-section",
        "--remove-section",
        "-e",
        "--edit",
        "set",
        "unset",
        "rename-section",
        "remove-section",
        "edit",
    }
)
_LISTING_VALUES = frozenset(
    {"--contains", "--no-contains", "--merged", "--no-merged", "--points-at", "--sort", "--format"}
)
_GIT_CONDITIONAL: dict[str, Validator] = {
    "branch": _git_listing(
        frozenset(
            {
                "-a",
                "--all",
                "-r",
                "--remotes",
                "-v",
                "-vv",
                "--verbose",
                "--show-current",
                "--color",
                "--no-color",
                "--column",
                "--no-column",
                "-i",
                "--ignore-case",
            }
        ),
        _LISTING_VALUES,
    ),
    "tag": _git_listing(
        frozenset({"--column", "--no-column", "--color", "--no-color", "-i", "--ignore-case"}),
        _LISTING_VALUES,
    ),
    "config": _git_config,
    "notes": _git_first_word(frozenset({"list", "show"}), bare=True),
    "reflog": _git_first_word(frozenset({"show", "exists"}), bare=True),
    "remote": _git_first_word(frozenset({"show", "get-url"}), bare=True),
    "stash": _git_first_word(frozenset({"list", "show"}), bare=False),
    "worktree": _git_first_word(frozenset({"list"}), bare=False),
}
