"""The environment a tool process gets: an allowlist, never the worker's secrets.

A tool process inherits nothing by default. It gets ``PATH``, ``HOME``, ``LANG``, ``LC_*``,
``TERM``, ``TZ`` and ``USER`` from the worker, plus the names its owner adds, and even those are
dropped when their name or value looks like a secret: a name containing KEY, TOKEN, SECRET,
PASSWORD, CREDENTIAL or AUTH, or a value shaped like an API key or a URL with a password. The
broker and Redis URLs are never passed. A printed environment then holds nothing worth stealing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from rho_agent.errors import ConfigError

BASE_NAMES = ("PATH", "HOME", "LANG", "TERM", "TZ", "USER")
"""Passed when set, together with every ``LC_*`` name."""

_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH(?!OR)", re.I)
_NEVER = re.compile(r"BROKER|REDIS|CELERY|DAYTONA|OPENAI|ANTHROPIC|RHO_AGENT", re.I)
_SECRET_VALUE = re.compile(
    r"\b(sk|pk|rk|dtn|ghp|gho|ghs|github_pat|xox[abp]|glpat|AKIA)[-_][A-Za-z0-9_-]{8,}"
    r"|\bAKIA[A-Z0-9]{12,}"
    r"|://[^/\s:@]*:[^/\s@]+@"  # a URL carrying a password (redis://:pw@host)
    r"|\bBearer\s+\S{8,}",
    re.I,
)


def looks_secret(name: str, value: str) -> bool:
    """Whether the variable ``name=value`` must never reach a tool process."""
    return bool(_SECRET_NAME.search(name) or _NEVER.search(name) or _SECRET_VALUE.search(value))


def check_extra_names(names: Iterable[str]) -> tuple[str, ...]:
    """Validate names a user adds to the allowlist: refuse ones that look secret (by name)."""
    checked = tuple(names)
    bad = [name for name in checked if looks_secret(name, "")]
    if bad:
        raise ConfigError(
            f"env names {', '.join(bad)} look like secrets or worker settings and are never "
            "passed to tool processes; rename the variable or drop it from the allowlist"
        )
    return checked


def tool_environment(source: Mapping[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """The allowlisted, secret-free subset of ``source`` for a tool process."""
    wanted = set(BASE_NAMES) | set(extra)
    return {
        name: value
        for name, value in source.items()
        if (name in wanted or name.startswith("LC_")) and not looks_secret(name, value)
    }


LC_NAMES = (
    "LC_ALL",
    "LC_CTYPE",
    "LC_COLLATE",
    "LC_MESSAGES",
    "LC_NUMERIC",
    "LC_TIME",
    "LC_MONETARY",
    "LC_PAPER",
    "LC_NAME",
    "LC_ADDRESS",
    "LC_TELEPHONE",
    "LC_MEASUREMENT",
    "LC_IDENTIFICATION",
)
"""The ``LC_*`` names a remote shell passes on (it cannot list a pattern portably)."""


def env_command_prefix(extra: Iterable[str] = ()) -> str:
    """``env -i NAME="$NAME"...``: a POSIX shell prefix that runs a command with only the
    allowlisted variables of the shell it runs in (each only if set there)."""
    names = [*BASE_NAMES, *LC_NAMES, *(name for name in extra if name not in BASE_NAMES)]
    return "env -i " + " ".join(f'${{{name}+"{name}=${name}"}}' for name in names)


def bash_scrub(extra: Iterable[str] = ()) -> str:
    """A bash statement that unexports every variable but the allowlisted ones (``extra`` must
    be valid variable names); it needs no program besides bash, unlike ``env -i``."""
    keep = "|".join([*BASE_NAMES, "LC_*", *extra])
    return f'for n in $(compgen -e); do case $n in {keep}) ;; *) unset "$n" ;; esac; done'
