"""A small tokenizer for the bash syntax the readonly shell policy has to understand.

It splits a command line into words, control operators and redirections, and collects the bodies
of command and process substitutions (``$(...)``, backticks, ``<(...)``, ``>(...)``) so the policy
can check them as commands too. It is deliberately strict: anything it cannot place (an unclosed
quote or parenthesis, a substitution inside ``${...}``) is a ``ShellSyntaxError``, which the policy
treats as a refusal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

OPERATORS = ("&&", "||", "|&", ";;&", ";;", ";&", "&", ";", "|", "(", ")", "\n")
REDIRECTIONS = ("&>>", "&>", "<<<", "<<-", "<<", "<>", "<&", ">&", ">>", ">|", "<", ">")
_WORD_END = frozenset(" \t\n;&|()<>")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPECIAL_PARAMETERS = frozenset("0123456789@*#?$!-")
_QUOTED = "\x00"  # stands for a quoted character in ``Word.bare``
_EXPANDING = re.compile(r"[*?]|\[[^\]]+\]|\{[^{}]*(?:,|\.\.)[^{}]*\}")
_ARITHMETIC = re.compile(r"\(([\w\s+\-*/%<>=!&|^~?:,.()]*)\)")


class ShellSyntaxError(ValueError):
    """The command line could not be tokenized with certainty."""


@dataclass(frozen=True)
class Word:
    """One shell word.

    ``text`` is the word after quote removal, with expansions left as written. ``dynamic``: part
    of its value is only known at run time (``$VAR``, substitutions, ANSI-C escapes). ``glob``: it
    holds unquoted pattern characters, so it may expand to other words (even ones starting with
    ``-``).
    """

    raw: str
    text: str
    dynamic: bool = False
    glob: bool = False


@dataclass(frozen=True)
class Operator:
    text: str


@dataclass(frozen=True)
class Redirect:
    op: str
    fd: str
    target: Word


Token = Word | Operator | Redirect


@dataclass
class Lexed:
    tokens: list[Token] = field(default_factory=list)
    substitutions: list[str] = field(default_factory=list)
    end: int = 0


def lex(source: str) -> Lexed:
    """Tokenize ``source``; raise ``ShellSyntaxError`` when unsure."""
    return _Lexer(source, 0, inside_parens=False).run()


class _Lexer:
    def __init__(self, source: str, start: int, *, inside_parens: bool) -> None:
        self.src = source
        self.pos = start
        self.inside_parens = inside_parens
        self.depth = 0
        self.out = Lexed()

    def run(self) -> Lexed:
        src = self.src
        while self.pos < len(src):
            char = src[self.pos]
            if char in " \t":
                self.pos += 1
            elif src.startswith("\\\n", self.pos):
                self.pos += 2
            elif char == "#":
                newline = src.find("\n", self.pos)
                self.pos = len(src) if newline == -1 else newline
            elif src.startswith(("<(", ">("), self.pos):
                self.out.tokens.append(self.word())
            elif (redirect := self.match(REDIRECTIONS)) is not None:
                self.redirect(redirect, "")
            elif (operator := self.match(OPERATORS)) is not None:
                if self.operator(operator):
                    return self.out
            else:
                self.word_or_fd()
        if self.inside_parens:
            raise ShellSyntaxError("unclosed '('")
        if self.depth:
            raise ShellSyntaxError("unclosed '('")
        return self.out

    def match(self, candidates: tuple[str, ...]) -> str | None:
        for candidate in candidates:
            if self.src.startswith(candidate, self.pos):
                return candidate
        return None

    def operator(self, operator: str) -> bool:
        """Record ``operator``; True when it closes the substitution being read."""
        self.pos += len(operator)
        if operator == "(":
            self.depth += 1
        elif operator == ")":
            if self.depth == 0:
                if self.inside_parens:
                    self.out.end = self.pos - 1
                    return True
                raise ShellSyntaxError("unbalanced ')'")
            self.depth -= 1
        self.out.tokens.append(Operator(operator))
        return False

    def word_or_fd(self) -> None:
        word = self.word()
        redirect = self.match(REDIRECTIONS)
        if redirect is not None and word.raw.isdigit():
            self.redirect(redirect, word.raw)
        else:
            self.out.tokens.append(word)

    def redirect(self, op: str, fd: str) -> None:
        self.pos += len(op)
        while self.pos < len(self.src) and self.src[self.pos] in " \t":
            self.pos += 1
        if self.pos >= len(self.src) or self.src[self.pos] in _WORD_END:
            raise ShellSyntaxError(f"redirection {op!r} has no target")
        self.out.tokens.append(Redirect(op, fd, self.word()))

    def word(self) -> Word:
        start = self.pos
        text: list[str] = []
        bare: list[str] = []
        dynamic = False
        src = self.src
        if src.startswith(("<(", ">("), self.pos):
            self.pos = self.substitution(self.pos + 2)
            text.append(src[start : self.pos])
            bare.append(_QUOTED)
            dynamic = True
        while self.pos < len(src) and src[self.pos] not in _WORD_END:
            char = src[self.pos]
            before = len(text)
            if char == "\\":
                self.pos += 2
                if src[self.pos - 1 : self.pos] != "\n":
                    text.append(src[self.pos - 1 : self.pos] or "\\")
            elif char == "'":
                self.single_quoted(text)
            elif src.startswith("$'", self.pos):
                dynamic |= self.ansi_c_quoted(text)
            elif char == '"':
                dynamic |= self.double_quoted(text)
            elif char in "$`":
                dynamic |= self.expansion(text)
            else:
                text.append(char)
                bare.append(char)
                self.pos += 1
                continue
            bare.extend(_QUOTED * len("".join(text[before:])))
        raw = src[start : self.pos]
        glob = bool(_EXPANDING.search("".join(bare)))
        return Word(raw=raw, text="".join(text), dynamic=dynamic, glob=glob)

    def single_quoted(self, text: list[str]) -> None:
        end = self.src.find("'", self.pos + 1)
        if end == -1:
            raise ShellSyntaxError("unclosed single quote")
        text.append(self.src[self.pos + 1 : end])
        self.pos = end + 1

    def ansi_c_quoted(self, text: list[str]) -> bool:
        """``$'...'``; dynamic when it holds escapes (they can spell any character)."""
        index = self.pos + 2
        while index < len(self.src) and self.src[index] != "'":
            index += 2 if self.src[index] == "\\" else 1
        if index >= len(self.src):
            raise ShellSyntaxError("unclosed $'...' quote")
        body = self.src[self.pos + 2 : index]
        text.append(body)
        self.pos = index + 1
        return "\\" in body

    def double_quoted(self, text: list[str]) -> bool:
        src = self.src
        dynamic = False
        self.pos += 1
        while self.pos < len(src) and src[self.pos] != '"':
            char = src[self.pos]
            if char == "\\" and src[self.pos + 1 : self.pos + 2] in ("$", "`", '"', "\\", "\n"):
                text.append(src[self.pos + 1].replace("\n", ""))
                self.pos += 2
            elif char in "$`":
                dynamic |= self.expansion(text)
            else:
                text.append(char)
                self.pos += 1
        if self.pos >= len(src):
            raise ShellSyntaxError("unclosed double quote")
        self.pos += 1
        return dynamic

    def expansion(self, text: list[str]) -> bool:
        """A ``$`` or backquote expansion, bare or in double quotes; returns whether it expands."""
        if self.src[self.pos] == "$":
            return self.dollar(text)
        self.backtick(text)
        return True

    def dollar(self, text: list[str]) -> bool:
        """A ``$`` expansion; returns whether it expands (a lone ``$`` is literal)."""
        src, start = self.src, self.pos
        following = src[start + 1 : start + 2]
        if following == "(":
            self.pos = self.substitution(start + 2, arithmetic=src.startswith("$((", start))
        elif following == "{":
            end = src.find("}", start + 2)
            if end == -1:
                raise ShellSyntaxError("unclosed ${")
            body = src[start + 2 : end]
            if any(mark in body for mark in ("$(", "`", "{", "'", '"')):
                raise ShellSyntaxError("quotes or substitutions inside ${...} are not supported")
            self.pos = end + 1
        elif name := _NAME.match(src, start + 1):
            self.pos = name.end()
        elif following and following in _SPECIAL_PARAMETERS:
            self.pos = start + 2
        else:
            text.append("$")
            self.pos = start + 1
            return False
        text.append(src[start : self.pos])
        return True

    def substitution(self, body_start: int, *, arithmetic: bool = False) -> int:
        """Read a ``(...)`` body starting at ``body_start``; return the index after its ``)``."""
        inner = _Lexer(self.src, body_start, inside_parens=True).run()
        body = self.src[body_start : inner.end]
        if not (arithmetic and _ARITHMETIC.fullmatch(body)):
            self.out.substitutions.append(body)
        return inner.end + 1

    def backtick(self, text: list[str]) -> None:
        src = self.src
        index = self.pos + 1
        body: list[str] = []
        while index < len(src) and src[index] != "`":
            if src[index] == "\\" and index + 1 < len(src):
                escaped = src[index + 1]
                body.append(escaped if escaped in "$`\\" else src[index : index + 2])
                index += 2
            else:
                body.append(src[index])
                index += 1
        if index >= len(src):
            raise ShellSyntaxError("unclosed backtick")
        self.out.substitutions.append("".join(body))
        text.append(src[self.pos : index + 1])
        self.pos = index + 1
