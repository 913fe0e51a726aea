"""The fleet's URLs: which kind of broker a URL names, and how a ``sentinel://`` URL reads.

Three kinds of broker carry jobs:

- ``redis``: ``redis://``, ``rediss://`` or ``unix://``; it can hold the job bus too;
- ``sentinel``: ``sentinel://[:password@]host:port[/db];sentinel://host2:port2;...``, the Redis
  master that the listed Sentinels name ``RHO_AGENT_SENTINEL_MASTER``; it can hold the bus too;
- ``amqp``: ``amqp://``, ``amqps://`` or ``pyamqp://`` (RabbitMQ); jobs only, so the bus needs
  its own Redis URL (``RHO_AGENT_REDIS_URL``).

The Sentinel form is kombu's: the addresses are ``;``-separated, and the password, user name and
database come from the first one. The bus reads it the same way, so one URL serves both.
Nothing here imports Redis or Celery.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

BrokerKind = Literal["redis", "sentinel", "amqp"]

_KINDS: dict[str, BrokerKind] = {
    "redis": "redis",
    "rediss": "redis",
    "unix": "redis",
    "sentinel": "sentinel",
    "amqp": "amqp",
    "amqps": "amqp",
    "pyamqp": "amqp",
}
_SENTINEL_PORT = 26379

URL_FORMS = (
    "redis://host:6379/0, rediss://..., sentinel://host:26379;sentinel://host2:26379 "
    "or amqp://user:password@host:5672/vhost"
)


class UrlError(ValueError):
    """A URL the fleet cannot use; the message names the setting and never echoes a password."""


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and status output)."""
    # Up to the last "@" before the host: redis-py and kombu read "u:p@ss@host" as password p@ss.
    return re.sub(r"//([^:/@]*):[^/]*@", r"//\1:***@", url)


def scheme_of(url: str) -> str:
    """The URL's scheme, lower-cased ('' when there is none)."""
    head, sep, _ = url.partition("://")
    return head.lower() if sep else ""


def url_kind(url: str, setting: str) -> BrokerKind:
    """The kind of server ``url`` names; UrlError naming ``setting`` when it is none we know."""
    kind = _KINDS.get(scheme_of(url))
    if kind is None:
        scheme = scheme_of(url) or "(no scheme)"
        raise UrlError(f"{setting} has the scheme {scheme!r}; use one of: {URL_FORMS}")
    return kind


def check_address(url: str, setting: str) -> None:
    """UrlError naming ``setting`` when the host and port of ``url`` cannot be read (an
    unencoded '/', '?' or '#' in the password ends the address early); the password is never
    echoed, and nor is the client library's own complaint, which may quote part of it."""
    try:
        urlsplit(url).port  # noqa: B018 - reading it is the check
    except ValueError:
        raise UrlError(
            f"{setting}: the host and port cannot be read (the port must be a number from 0 to "
            "65535, an IPv6 host goes in [...]); percent-encode any '/', '?', '#' or '@' in the "
            "user name or password (/ is %2F), e.g. redis://:p%2Fss@host:6379/0"
        ) from None


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed ``sentinel://`` URL: the Sentinels to ask, and how to log in to the master."""

    sentinels: tuple[tuple[str, int], ...]
    db: int
    username: str | None
    password: str | None


def parse_sentinel_url(url: str, setting: str) -> SentinelUrl:
    """Read ``sentinel://[user:password@]host:port[/db];sentinel://host2:port2`` as kombu does."""
    parts = [part.strip() for part in url.split(";") if part.strip()]
    if not parts:
        raise UrlError(f"{setting} is empty; use sentinel://host:26379;sentinel://host2:26379")
    sentinels: list[tuple[str, int]] = []
    for part in parts:
        if scheme_of(part) != "sentinel":
            raise UrlError(
                f"{setting}: every ';'-separated address must start with sentinel://, "
                f"not {scheme_of(part) or '(no scheme)'}://"
            )
        split = urlsplit(part)
        try:
            port = split.port or _SENTINEL_PORT
        except ValueError:
            raise UrlError(
                f"{setting}: a Sentinel address has a port that is not a number"
            ) from None
        if not split.hostname:
            raise UrlError(f"{setting}: a Sentinel address has no host (sentinel://host:26379)")
        sentinels.append((split.hostname, port))
    first = urlsplit(parts[0])
    path = first.path.strip("/")
    if path and not path.isdigit():
        raise UrlError(f"{setting}: the database after the first address must be a number")
    return SentinelUrl(
        sentinels=tuple(sentinels),
        db=int(path or 0),
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password else None,
    )
