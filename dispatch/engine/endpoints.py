"""Model endpoints a worker agrees to send its API key to.

A worker's API key comes from its own environment and goes with every model request, so a job
naming its own ``base_url`` could have the key sent anywhere. A worker therefore runs a job only
when the job's ``base_url`` is one of its allowed endpoints (``RHO_AGENT_ALLOWED_BASE_URLS``,
by default the endpoint the worker itself is configured for). The check runs before the session
starts, so a refused job has made no request at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

from dispatch.errors import JobRefused
from dispatch.settings_table import Setting
from rho_agent.model.openai_client import BASE_URL_ENV

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"


def normalise(url: str) -> str:
    """``url`` compared by scheme, host, port and path: case and a trailing ``/`` don't matter."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, "", ""))


def listed_base_urls(raw: str, name: str) -> tuple[str, ...]:
    """The comma-separated endpoints of ``raw``, normalised (empty items skipped)."""
    return tuple(normalise(item) for item in raw.split(",") if item.strip())


def default_base_urls(env: Mapping[str, str]) -> tuple[str, ...]:
    """The worker's own endpoint (``OPENAI_BASE_URL``, else OpenAI's), when none is listed."""
    return (normalise(env.get(BASE_URL_ENV) or OPENAI_DEFAULT_BASE_URL),)


ALLOWED_BASE_URLS = Setting[tuple[str, ...]](
    "RHO_AGENT_ALLOWED_BASE_URLS",
    "allowed_base_urls",
    (),
    "model endpoints (comma-separated) jobs may name; the API key goes only to these "
    "(see [secrets](secrets.md))",
    listed_base_urls,
    shown=BASE_URL_ENV,
)
"""Read by workers (``workers.worker_settings.WORKER``); empty means ``default_base_urls``."""


def check_endpoint(base_url: str | None, allowed: Iterable[str] | None) -> None:
    """Raise JobRefused if the job's ``base_url`` is not an allowed endpoint.

    ``None`` (the worker's own endpoint) is always allowed; ``allowed=None`` allows everything
    (embedded mode: the key and the job belong to the same program).
    """
    if base_url is None or allowed is None:
        return
    allowed = tuple(allowed)
    if normalise(base_url) in allowed:
        return
    parts = urlsplit(base_url.strip())
    shown = f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")
    raise JobRefused(
        f"job names the model endpoint {shown}, which is not one this worker sends its API key to "
        f"({', '.join(allowed)}); drop base_url from the job, or add the endpoint to "
        f"{ALLOWED_BASE_URLS.name} on the workers"
    )
