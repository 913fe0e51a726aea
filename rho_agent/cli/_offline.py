"""Offline mode: with no API key and no base URL, local runs talk to the scripted model server.

This is what lets a newcomer (or a machine without internet) see the main job work. The same
command with ``OPENAI_API_KEY`` set, or ``--base-url``, talks to a real model instead.

Only where the model is called from this process: ``run``, and ``dispatch`` in embedded mode.
With a broker the workers call the model with their own keys (docs/fleet.md), so ``dispatch``
never decides it for them from the dispatching shell's environment.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

OFFLINE_BEHAVIOUR = "workspace"


def should_go_offline(*, offline: bool, base_url: str | None) -> bool:
    """Offline when asked, or when nothing could reach a real model."""
    if offline:
        return True
    has_endpoint = bool(base_url or os.environ.get("OPENAI_BASE_URL"))
    return not has_endpoint and not os.environ.get("OPENAI_API_KEY")


@contextmanager
def offline_model(console: Console) -> Iterator[str]:
    """Start the scripted model server for the duration of a command; yields its base URL."""
    from rho_agent.testing import ScriptedModelServer, behaviour

    console.print(
        "[yellow]offline mode:[/] no OPENAI_API_KEY or --base-url, so answers come from the "
        "built-in scripted model (set OPENAI_API_KEY to use a real model); tokens and costs "
        "shown are what the same requests would cost on the configured model"
    )
    with ScriptedModelServer(responder=behaviour(OFFLINE_BEHAVIOUR)) as server:
        yield server.base_url
