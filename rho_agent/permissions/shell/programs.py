"""Argument checks for the programs the readonly shell policy allows with conditions.

Each validator gets the program's name and its argument words and raises ``Refused`` with a
sentence the model can act on. They assume GNU tools: options may come after operands, long
options may be abbreviated, so an argument whose value is only known at run time (``$X``, ``*``)
could become an option and is refused where options are dangerous.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from rho_agent.permissions.shell.lex import Word

Validator = Callable[[str, Sequence[Word]], None]


class Refused(Exception):
    """The command might change something; the message says why."""


def static_options(name: str, args: Sequence[Word]) -> None:
    """Refuse run-time values before ``--``: ``$X`` or ``*`` could expand to an option."""
    for arg in args:
        if arg.text == "--" and not arg.dynamic:
            return
        if arg.dynamic or arg.glob:
            raise Refused(
                f"{name}: {arg.raw} is only known at run time and could turn into an option; "
                "write the value out (quote patterns), or put file names after --"
            )


def find_option(args: Sequence[Word], short: str = "", long: Sequence[str] = ()) -> str | None:
    """The first argument before ``--`` that is one of the options, or an abbreviation of a long
    one (GNU tools accept ``--out`` for ``--output``)."""
    for arg in args:
        text = arg.text
        if text == "--":
            return None
        if text.startswith("--"):
            given = text[2:].split("=", 1)[0]
            if given and any(option[2:].startswith(given) for option in long):
                return text
        elif text.startswith("-") and any(letter in text[1:] for letter in short):
            return text
    return None


def operands(args: Sequence[Word], value_options: frozenset[str]) -> list[Word]:
    """The non-option arguments, skipping the values of ``value_options``."""
    found: list[Word] = []
    index = 0
    while index < len(args):
        text = args[index].text
        if text == "--":
            return found + list(args[index + 1 :])
        if text in value_options:
            index += 1
        elif not text.startswith("-") or text == "-":
            found.append(args[index])
        index += 1
    return found


def refuse_options(short: str = "", long: Sequence[str] = (), why: str = "") -> Validator:
    """A validator refusing the given options (and run-time values before ``--``)."""

    def check(name: str, args: Sequence[Word]) -> None:
        static_options(name, args)
        option = find_option(args, short, long)
        if option is not None:
            raise Refused(f"{name} {option} is not allowed in readonly mode ({why})")

    return check


def only_flags(allowed: frozenset[str]) -> Validator:
    """A validator allowing nothing but the listed flags."""

    def check(name: str, args: Sequence[Word]) -> None:
        for arg in args:
            if arg.dynamic or arg.text not in allowed:
                shown = " ".join(sorted(allowed)) or "nothing"
                raise Refused(
                    f"{name} {arg.raw} is not allowed in readonly mode "
                    f"(it may only be given: {shown})"
                )

    return check


def any_arguments(name: str, args: Sequence[Word]) -> None:
    """For commands no argument can turn into a writer."""


def check_find(name: str, args: Sequence[Word]) -> None:
    for arg in args:
        if arg.dynamic or arg.glob:
            raise Refused(f"find: {arg.raw} is only known at run time; quote patterns for find")
        if arg.text in _FIND_ACTIONS:
            raise Refused(
                f"find {arg.text} runs commands or writes files, so it is not allowed in "
                "readonly mode; list the files, then read them with other commands"
            )


_FIND_ACTIONS = frozenset(
    {"-exec", "-execdir", "-ok", "-okdir", "-delete", "-fprint", "-fprint0", "-fprintf", "-fls"}
)


def check_awk(name: str, args: Sequence[Word]) -> None:
    static_options(name, args)
    index = 0
    while index < len(args) and args[index].text.startswith("-") and args[index].text != "-":
        text = args[index].text
        if text == "--":
            index += 1
            break
        if text in ("-F", "-v"):
            index += 2
        elif text.startswith(("-F", "-v", "--field-separator=", "--assign=")):
            index += 1
        else:
            raise Refused(
                f"{name} option {text} is not allowed in readonly mode (only -F and -v; -f reads "
                "a program this check cannot see)"
            )
    if index >= len(args):
        raise Refused(f"{name} needs a program")
    program = args[index]
    if program.dynamic:
        raise Refused(f"{name}: the program {program.raw} is only known at run time")
    found = _AWK_UNSAFE.search(program.text)
    if found:
        raise Refused(
            f"{name} programs may not contain {found.group(0)!r} in readonly mode, because "
            "it can run commands or write files (this includes the > comparison: write b < a)"
        )


_AWK_UNSAFE = re.compile(r"system|getline|[|>@]")


def check_uniq(name: str, args: Sequence[Word]) -> None:
    static_options(name, args)
    if len(operands(args, frozenset({"-f", "-s", "-w"}))) > 1:
        raise Refused("uniq with two file names writes the second one; pipe its output instead")


def check_date(name: str, args: Sequence[Word]) -> None:
    refuse_options("s", ("--set",), "it sets the clock")(name, args)
    values = frozenset({"-d", "-f", "-r", "--date", "--file", "--reference"})
    for operand in operands(args, values):
        if not operand.text.startswith("+"):
            raise Refused(f"date {operand.text} sets the clock; use date +FORMAT or date -d DATE")


def check_command_builtin(name: str, args: Sequence[Word]) -> None:
    if not args or args[0].text not in ("-v", "-V"):
        raise Refused("only 'command -v NAME' is allowed in readonly mode")


def check_double_bracket(name: str, args: Sequence[Word]) -> None:
    if not args or args[-1].text != "]]":
        raise Refused("[[ ... ]] must end with ]] and may not contain < or > in readonly mode")


def check_read(name: str, args: Sequence[Word]) -> None:
    """``read`` may only set lowercase shell variables (not PATH, IFS or exported names)."""
    index = 0
    while index < len(args):
        text = args[index].text
        if text in ("-d", "-n", "-N", "-p", "-t", "-u", "-i"):
            index += 2
            continue
        if text == "-a":
            index += 1
            if index >= len(args):
                raise Refused("read -a needs a variable name")
        if text == "-a" or not text.startswith("-"):
            _check_variable(name, args[index])
        index += 1


def check_printf(name: str, args: Sequence[Word]) -> None:
    """``printf -v NAME`` sets a variable: only lowercase shell variables."""
    if args and args[0].text == "-v":
        if len(args) < 2:
            raise Refused("printf -v needs a variable name")
        _check_variable(name, args[1])


def _check_variable(name: str, word: Word) -> None:
    if word.dynamic or not re.fullmatch(r"[a-z_][a-z0-9_]*", word.text):
        raise Refused(
            f"{name} may only set lowercase shell variables in readonly mode, not {word.raw}"
        )


# -- sed -------------------------------------------------------------------------------------------


def check_sed(name: str, args: Sequence[Word]) -> None:
    static_options(name, args)
    scripts: list[Word] = []
    files: list[Word] = []
    index = 0
    while index < len(args):
        text = args[index].text
        if text == "--":
            files += args[index + 1 :]
            break
        if text.startswith("--expression="):
            scripts.append(Word(text, text.split("=", 1)[1]))
        elif text in _SED_LONG_FLAGS:
            pass
        elif text.startswith("-") and text != "-":
            index = _sed_short_options(args, index, scripts)
        else:
            files.append(args[index])
        index += 1
    if not scripts and files:
        scripts.append(files.pop(0))
    if not scripts:
        raise Refused("sed needs a script")
    for script in scripts:
        if script.dynamic:
            raise Refused(f"sed: the script {script.raw} is only known at run time")
        check_sed_script(script.text)


_SED_LONG_FLAGS = frozenset(
    {
        "--quiet",
        "--silent",
        "--regexp-extended",
        "--separate",
        "--unbuffered",
        "--null-data",
        "--posix",
        "--debug",
        "--sandbox",
    }
)


def _sed_short_options(args: Sequence[Word], index: int, scripts: list[Word]) -> int:
    """Read one option cluster like ``-nE`` or ``-e SCRIPT``; return the last index it used."""
    text = args[index].text
    if text == "--expression":
        text = "-e"
    for position, letter in enumerate(text[1:], start=1):
        if letter in "nEsruz":
            continue
        if letter == "e":
            rest = text[position + 1 :]
            if rest:
                scripts.append(Word(rest, rest))
                return index
            if index + 1 >= len(args):
                raise Refused("sed -e needs a script")
            scripts.append(args[index + 1])
            return index + 1
        raise Refused(
            f"sed option {text} is not allowed in readonly mode (-i edits files in place, -f "
            "reads a script this check cannot see); allowed: -n -E -r -s -u -z -e"
        )
    return index


def check_sed_script(script: str) -> None:
    """Accept scripts made of printing/selecting commands (``p``, ``d``, ``s///g``, ``10q``...);
    refuse ``w``/``W`` (write files), ``e`` and ``s///e`` (run commands) and anything unclear."""
    index = 0
    while True:
        index = _skip(script, index, " \t\n;")
        if index >= len(script):
            return
        index = _skip(script, _sed_address(script, index), " \t")
        if script.startswith("!", index):
            index = _skip(script, index + 1, " \t")
        if index >= len(script):
            raise Refused("sed: an address without a command")
        opens_block = script[index] == "{"
        index = _skip(script, _sed_command(script, index), " \t")
        if not opens_block and index < len(script) and script[index] not in ";\n}":
            raise Refused(f"sed: cannot check the script near {script[index : index + 12]!r}")


def _skip(text: str, index: int, characters: str) -> int:
    while index < len(text) and text[index] in characters:
        index += 1
    return index


def _sed_command(script: str, index: int) -> int:
    command = script[index]
    if command in "qQl":
        return _skip(script, _skip(script, index + 1, " \t"), "0123456789")
    if command in "pdDnNgGhHxzPF={}":
        return index + 1
    if command == "s":
        return _sed_substitute(script, index + 1)
    if command == "y":
        return _sed_delimited(script, index + 1, parts=2)
    if command in ":btT#":
        while index < len(script) and script[index] not in (";\n" if command != "#" else "\n"):
            index += 1
        return index
    raise Refused(
        f"sed command {command!r} is not allowed in readonly mode (w and W write files, e runs "
        "commands; r, R, a, i and c are not supported)"
    )


def _sed_address(script: str, index: int) -> int:
    after = _sed_single_address(script, index)
    if after == index or not script.startswith(",", after):
        return after
    second = _skip(script, after + 1, " \t")
    if second < len(script) and script[second] in "+~":
        return _skip(script, second + 1, "0123456789")
    end = _sed_single_address(script, second)
    if end == second:
        raise Refused("sed: cannot check the address range")
    return end


def _sed_single_address(script: str, index: int) -> int:
    if index < len(script) and script[index].isdigit():
        end = _skip(script, index, "0123456789")
        return _skip(script, end + 1, "0123456789") if script.startswith("~", end) else end
    if script.startswith("$", index):
        return index + 1
    if script.startswith("/", index):
        return _sed_delimited(script, index, parts=1)
    if script.startswith("\\", index):
        return _sed_delimited(script, index + 1, parts=1)
    return index


def _sed_delimited(script: str, index: int, parts: int) -> int:
    """Skip a delimiter at ``index`` and ``parts`` delimited sections; return the index after."""
    if index >= len(script) or script[index] in "\n\\":
        raise Refused("sed: cannot check the script (missing delimiter)")
    delimiter = script[index]
    index += 1
    for _ in range(parts):
        while index < len(script) and script[index] != delimiter:
            if script[index] == "\n":
                raise Refused("sed: unterminated expression")
            index += 2 if script[index] == "\\" else 1
        if index >= len(script):
            raise Refused("sed: unterminated expression")
        index += 1
    return _skip(script, index, "IM") if parts == 1 else index


def _sed_substitute(script: str, index: int) -> int:
    index = _sed_delimited(script, index, parts=2)
    index = _skip(script, index, "gpiImM0123456789")
    if index < len(script) and script[index] in "ewW":
        raise Refused(
            "sed s///w writes a file and s///e runs a command; not allowed in readonly mode"
        )
    return index
