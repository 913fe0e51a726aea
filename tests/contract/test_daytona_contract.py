"""DaytonaBackend passes the backend contract, through the real ``daytona`` SDK and the fake
Daytona server (each test gets a fresh sandbox, which must be deleted afterwards)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from rho_agent.backends.base import ExecutionBackend
from rho_agent.backends.daytona.backend import DaytonaBackend
from rho_agent.testing.fake_daytona import FakeDaytonaServer

from .backend_contract import BackendContract


class TestDaytonaBackend(BackendContract):
    @pytest.fixture
    async def backend(self, fake_daytona: FakeDaytonaServer) -> AsyncIterator[ExecutionBackend]:
        backend = DaytonaBackend().for_session()
        await backend.start()
        try:
            yield backend
        finally:
            await backend.close()
