"""Session ids: generated sortable by time, validated so they are safe as file and key names."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

from rho_agent.errors import SessionError

_VALID_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def new_session_id() -> str:
    """``20261124-051502-3f9a1c2b``: sorts by creation time, unique by its random tail."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


def validate_session_id(session_id: str) -> str:
    """Return ``session_id`` if it is safe as a directory or key name; raise ``SessionError``."""
    if not isinstance(session_id, str) or not _VALID_ID.match(session_id):
        raise SessionError(
            f"invalid session id {session_id!r}: use 1-128 letters, digits, '-' or '_' "
            "(starting with a letter or digit)"
        )
    return session_id
