"""The fake Daytona's control-plane endpoints (``/api/sandbox...``), as the real SDK calls them."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from rho_agent.testing._daytona_state import World, api_error, failure_error


class ApiRoutes:
    """Sandbox create / get / delete / activity, backed by a ``World``."""

    def __init__(self, world: World) -> None:
        self.world = world

    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/api/sandbox", self.create)
        app.router.add_get("/api/sandbox/{id}", self.get)
        app.router.add_delete("/api/sandbox/{id}", self.delete)
        app.router.add_get("/api/sandbox/{id}/toolbox-proxy-url", self.toolbox_proxy_url)
        app.router.add_post("/api/sandbox/{id}/last-activity", self.last_activity)

    def _begin(self, request: web.Request, operation: str) -> None:
        self.world.check_auth(request)
        failure = self.world.take_failure(operation)
        if failure is not None:
            raise failure_error(failure, daemon=False)

    async def create(self, request: web.Request) -> web.Response:
        self._begin(request, "create")
        body = await request.json()
        if not isinstance(body, dict):
            raise api_error(400, "request body must be a JSON object")
        _validate_create(body)
        sandbox = self.world.create(body)
        return web.json_response(self.world.dto(sandbox))

    async def get(self, request: web.Request) -> web.Response:
        self._begin(request, "get")
        return web.json_response(self.world.dto(self.world.find(request.match_info["id"])))

    async def delete(self, request: web.Request) -> web.Response:
        self._begin(request, "delete")
        sandbox = self.world.find(request.match_info["id"])
        await self.world.destroy(sandbox)
        return web.json_response(self.world.dto(sandbox))

    async def toolbox_proxy_url(self, request: web.Request) -> web.Response:
        self._begin(request, "toolbox_proxy_url")
        self.world.find(request.match_info["id"])
        return web.json_response({"url": self.world.toolbox_url})

    async def last_activity(self, request: web.Request) -> web.Response:
        self._begin(request, "last_activity")
        sandbox = self.world.find(request.match_info["id"])
        with self.world.lock:
            sandbox.activity_refreshes += 1
        return web.Response(status=201)


def _validate_create(body: dict[str, Any]) -> None:
    """Reject what the real API rejects: a bad request must not pass here and fail in production."""
    if body.get("snapshot") and body.get("buildInfo"):
        raise api_error(400, "Cannot specify both a snapshot and build info")
    if body.get("snapshot") and any(body.get(key) for key in ("cpu", "memory", "disk", "gpu")):
        raise api_error(400, "Cannot specify sandbox resources when using a snapshot")
    for key in ("autoStopInterval", "autoArchiveInterval"):
        value = body.get(key)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise api_error(400, f"{key} must be a non-negative integer")
    env = body.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise api_error(400, "env must map names to strings")
