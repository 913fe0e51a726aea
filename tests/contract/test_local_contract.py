"""LocalBackend passes the backend contract."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rho_agent.backends.base import ExecutionBackend
from rho_agent.backends.local import LocalBackend

from .backend_contract import BackendContract


class TestLocalBackend(BackendContract):
    @pytest.fixture
    async def backend(self, tmp_path: Path) -> AsyncIterator[ExecutionBackend]:
        backend = LocalBackend(str(tmp_path / "work"))
        await backend.start()
        try:
            yield backend
        finally:
            await backend.close()
