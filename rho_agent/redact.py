"""Redaction: secret values never reach a trace, an event, Redis, a log line or an error message.

A secret is either a value this process holds (its API keys and tokens, the password part of its
broker or Redis URL, read once from the environment) or text that has the shape of one (``sk-...``
keys, ``Bearer ...`` headers, ``?key=...`` and ``api_key=...`` parameters, ``user:pass@`` in a URL).
Both are replaced with ``[redacted]``.

Redaction runs at the few narrow points everything stored passes through, once each:
``State.append`` (trace records, and so the model's view of tool output), ``RunContext.emit``
(events), the fleet's Redis writer, error messages built from untrusted input, and a
``logging.Filter`` (``install_log_redaction``). Patterns are compiled once, and ordinary text
costs a few substring searches (see ``Redactor``).
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote, urlsplit

REDACTED: Final = "[redacted]"

SECRET_NAME = re.compile(r"(^|_)(api_?key|secret|password|passwd|token|credentials?)$", re.I)
"""Config keys whose values are secrets."""

_SECRET_ENV_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")
"""Environment variables whose name holds one of these hold secrets (``AWS_SECRET_ACCESS_KEY``,
``GH_AUTH``): redacting a harmless value costs little, missing a key costs much."""

_MIN_KNOWN_LENGTH = 8
"""Shorter values are not treated as known secrets (``1``, ``true``, ``dev`` would redact text)."""


@dataclass(frozen=True)
class _Shape:
    """One secret shape: a regex whose group 1 (if any) is kept, and the lower-case words one of
    which must occur in the text for the regex to be worth running."""

    regex: re.Pattern[str]
    anchors: tuple[str, ...]


_SHAPES: Final = (
    _Shape(re.compile(r"()\bsk-[A-Za-z0-9_-]{16,}"), ("sk-",)),
    _Shape(re.compile(r"()\bdtn_[A-Za-z0-9]{16,}"), ("dtn_",)),
    _Shape(re.compile(r"(\bBearer\s+)[A-Za-z0-9._~+/=-]{8,}", re.I), ("bearer",)),
    _Shape(
        re.compile(
            r"([?&;](?:api[_-]?key|key|token|access_token|secret|password)=)[^&#\s\"']+", re.I
        ),
        ("key", "token", "secret", "password"),
    ),
    _Shape(
        re.compile(
            r"(\b(?:api[_-]?key|secret_?key|access_token|password)[\"']?\s*[=:]\s*[\"']?)"
            r"[^\s\"'&,;]{6,}",
            re.I,
        ),
        ("key", "token", "password"),
    ),
    _Shape(re.compile(r"(://[^/:@\s\"']*:)[^/@\s\"']+(?=@)"), ("://",)),
)
"""Text that has the shape of a secret, wherever it occurs in a string."""

_ANCHORS: Final = tuple(sorted({word for shape in _SHAPES for word in shape.anchors}))


class Redactor:
    """Replaces known secret values and secret-shaped text with ``[redacted]``.

    Cheap on ordinary text: known values are plain substring searches, and a shape's regex runs
    only when one of its anchor words occurs (one ``lower()`` and a few substring searches).
    """

    def __init__(self, known: Iterable[str] = ()) -> None:
        values = {value for value in known if len(value) >= _MIN_KNOWN_LENGTH}
        self.known: tuple[str, ...] = tuple(sorted(values, key=len, reverse=True))

    def text(self, value: str) -> str:
        """``value`` with every secret in it replaced."""
        for known in self.known:
            if known in value:
                value = value.replace(known, REDACTED)
        for shape in self._shapes_in(value):
            value = shape.regex.sub(_keep_prefix, value)
        return value

    def data(self, value: Any) -> Any:
        """A copy of JSON-like ``value`` with every string redacted (unchanged parts are shared)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {key: self.data(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(item) for item in value]
        return value

    def finds(self, value: str) -> bool:
        """Whether ``value`` holds a secret."""
        if any(known in value for known in self.known):
            return True
        return any(shape.regex.search(value) for shape in self._shapes_in(value))

    @staticmethod
    def _shapes_in(value: str) -> list[_Shape]:
        """The shapes whose anchor words occur in ``value``: usually none, found with one
        ``lower()`` and a substring search per distinct word (this runs on every string of every
        trace record and event)."""
        lowered = value.lower()
        if not _anchored(lowered):
            return []
        return [shape for shape in _SHAPES if any(word in lowered for word in shape.anchors)]


def _anchored(lowered: str) -> bool:
    """Whether lower-cased text holds an anchor word of a secret shape."""
    return any(word in lowered for word in _ANCHORS)


def _keep_prefix(match: re.Match[str]) -> str:
    return match.group(1) + REDACTED


_PROBES: Final = tuple(sep + "x1x1x1x1x1x1x1x1" for sep in ("", "=", ":"))
"""What may follow a cut and complete a secret before it: a key's value (characters every
shape's value allows, long enough for each), alone or after an ``api_key =`` separator."""
_LOOKBACK: Final = 64
"""Characters before a cut that could start a secret continuing past it (``password = ``)."""


class StreamRedactor:
    """Redacts text that arrives in pieces (a model's streamed answer): a secret split across
    pieces is caught, since each piece is only handed on once no secret can still span its end.

    Text is cut only after whitespace, which no secret shape holds except between a prefix and
    its value (``Bearer``, ``password =``): a cut is refused when a value appended after it would
    be redacted, and when it falls inside a known secret that holds whitespace. The tail after
    the last safe cut is held back until more text arrives or ``flush``.
    """

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._spaced = [known for known in redactor.known if any(c.isspace() for c in known)]
        self._held = ""

    def feed(self, piece: str) -> str:
        """The text that can be shown now, redacted ("" while all of it is held back)."""
        start = len(self._held)
        self._held += piece
        for cut in range(len(self._held), start, -1):
            if self._held[cut - 1].isspace() and self._safe_cut(cut):
                ready, self._held = self._held[:cut], self._held[cut:]
                return self._redactor.text(ready)
        return ""

    def flush(self) -> str:
        """The text held back, redacted: call it when the stream ended (or broke)."""
        rest, self._held = self._held, ""
        return self._redactor.text(rest) if rest else ""

    def _safe_cut(self, cut: int) -> bool:
        words_end = cut  # the lookback is counted from before the whitespace the cut follows
        while words_end > 0 and self._held[words_end - 1].isspace():
            words_end -= 1
        before = self._held[max(0, words_end - _LOOKBACK) : cut]
        redactor = self._redactor
        # A probe only completes a shape whose anchor word is already before the cut; most
        # text has none, and skips the four redactions (they cost ~9 us a streamed delta).
        if _anchored(before.lower()):
            start = redactor.text(before)
            if any(redactor.text(before + probe) != start + probe for probe in _PROBES):
                return False
        for known in self._spaced:
            for offset in range(max(0, cut - len(known) + 1), cut):
                if known.startswith(self._held[offset : offset + len(known)]):
                    return False
        return True


def known_secrets(env: Mapping[str, str]) -> list[str]:
    """The secret values in ``env``: values of secret-named variables, passwords in URLs."""
    found = []
    for name, value in env.items():
        if not value:
            continue
        if any(word in name.upper() for word in _SECRET_ENV_WORDS):
            found.append(value.strip())
        password = url_password(value)
        if password:  # as written, and as clients decode it (``p%40ss`` is used as ``p@ss``)
            found += {password, unquote(password)}
    return found


def url_password(text: str) -> str | None:
    """The password of a URL (``redis://:pw@host``), or None."""
    if "://" not in text or "@" not in text:
        return None
    try:
        return urlsplit(text.strip()).password or None
    except ValueError:
        return None


@functools.cache
def default_redactor() -> Redactor:
    """The redactor for this process: its environment's secrets, read on first use."""
    return Redactor(known_secrets(os.environ))


def redact(value: str) -> str:
    """``value`` with this process's secrets replaced (see ``default_redactor``)."""
    return default_redactor().text(value)


def redact_data(value: Any) -> Any:
    """JSON-like ``value`` with this process's secrets replaced in every string."""
    return default_redactor().data(value)


class RedactingFilter(logging.Filter):
    """Redacts a log record's message, traceback and stack before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        redactor = default_redactor()
        message = record.getMessage()
        cleaned = redactor.text(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redactor.text(record.exc_text)
        if record.stack_info:
            record.stack_info = redactor.text(record.stack_info)
        return True


_PACKAGES = ("rho_agent", "dispatch", "workers", "celery", "kombu")


def install_log_redaction() -> None:
    """Redact every log record of this process's packages and every root handler's output.

    A logger's filter only sees records logged on that very logger, so the filter goes on the
    package loggers, on every logger already created below them, and on the root handlers
    (which every propagated record passes through). Calling it again adds nothing twice.
    """
    targets: list[logging.Logger | logging.Handler] = list(logging.getLogger().handlers)
    for name in list(logging.root.manager.loggerDict):
        if name.split(".")[0] in _PACKAGES:
            targets.append(logging.getLogger(name))
    targets.extend(logging.getLogger(name) for name in _PACKAGES)
    for target in targets:
        if not any(isinstance(item, RedactingFilter) for item in target.filters):
            target.addFilter(RedactingFilter())
