"""Agent: a stateless, reusable agent definition (resolved prompt, tools, model client)."""

from __future__ import annotations

import os

from rho_agent.backends.base import ExecutionBackend
from rho_agent.config import AgentConfig
from rho_agent.errors import ConfigError
from rho_agent.model.base import ModelClient
from rho_agent.model.openai_client import OpenAIModelClient
from rho_agent.permissions.profile import PermissionProfile, load_profile
from rho_agent.pricing import PriceTable
from rho_agent.tools import build_registry
from rho_agent.tools.registry import ToolRegistry


class Agent:
    """Holds the resolved config, the tool registry built from the profile, and the model client.

    An Agent keeps no run state, so many Sessions (even concurrent ones) can share one.
    ``model_client`` replaces the OpenAI client (any ``ModelClient``); ``price_table`` the prices.
    The config's ``extras.prices`` are added on top of ``price_table``.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        model_client: ModelClient | None = None,
        price_table: PriceTable | None = None,
    ) -> None:
        if not isinstance(config, AgentConfig):
            raise ConfigError(f"Agent() takes an AgentConfig, got {type(config).__name__}")
        self.config = config
        self.profile: PermissionProfile = load_profile(config.profile)
        self.registry: ToolRegistry = build_registry(self.profile)
        self.system_prompt: str = config.resolve_system_prompt()
        self.price_table = (price_table or PriceTable()).with_prices(config.prices())
        self._model_client = model_client

    def create_client(self) -> ModelClient:
        """The model client sessions of this agent use (HTTP connections are pooled per loop)."""
        if self._model_client is not None:
            return self._model_client
        return OpenAIModelClient(base_url=self.config.base_url)

    def create_backend(self, session_id: str | None = None) -> ExecutionBackend:
        """A fresh execution backend for one session (its own sandbox for Daytona)."""
        backend = self.config.backend
        if backend == "local":
            from rho_agent.backends.local import LocalBackend

            return LocalBackend(self.config.working_dir or os.getcwd())
        if backend == "daytona":
            from rho_agent.backends.daytona.backend import DaytonaBackend

            template = DaytonaBackend(working_dir=self.config.working_dir)
            return template.for_session(session_id=session_id)
        if isinstance(backend, str):
            raise ConfigError(f"unknown backend {backend!r}; use 'local' or 'daytona'")
        return backend.for_session(session_id=session_id)
