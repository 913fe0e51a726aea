"""workers: the rho-agent fleet worker (a Celery app whose jobs share one asyncio session host).

Run it with ``celery -A workers worker`` or ``rho-agent worker``; configure it with the
``RHO_AGENT_*`` variables in ``workers.worker_settings.SETTINGS``. ``workers.app`` is created on
first access (reading the environment then, not at import).
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["app", "create_app", "get_app"]


def create_app(*args: Any, **kwargs: Any) -> Celery:
    """See ``workers.celery_app.create_app``."""
    from workers.celery_app import create_app as create

    return create(*args, **kwargs)


@cache
def get_app() -> Celery:
    """The process's worker app, built from the environment on first call."""
    return create_app()


def __getattr__(name: str) -> Any:
    if name == "app":  # what ``celery -A workers`` looks up
        return get_app()
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
