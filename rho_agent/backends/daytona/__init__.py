"""The Daytona backend: tools run in a Daytona sandbox through the ``daytona`` SDK.

``backend`` is the ``ExecutionBackend``; ``lifecycle`` creates, reuses and deletes sandboxes;
``commands`` and ``files`` run commands and move files; ``sdk`` wraps the optional dependency;
``settings`` reads the Daytona settings.
"""

from __future__ import annotations

from rho_agent.backends.daytona.backend import DaytonaBackend

__all__ = ["DaytonaBackend"]
