"""A REST hook backend for tests: an aiohttp app on 127.0.0.1 whose first path segment names an application.

Subclasses decide what each application answers (`answer`); every request is kept, so tests can check what
the server sent and when.
"""

from __future__ import annotations

import json

from aiohttp import web


class HookBackend:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict, dict]] = []  # (app, method, body, headers)
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def answer(self, app: str, method: str, body: dict, raw: bytes,
                     request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        app, method = request.match_info["app"], request.match_info["method"]
        raw = await request.read()
        body = json.loads(raw)
        self.requests.append((app, method, body, dict(request.headers)))
        return await self.answer(app, method, body, raw, request)

    async def start(self) -> None:
        application = web.Application()
        application.router.add_post("/{app}/{method}", self._handle)
        self.runner = web.AppRunner(application, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def url(self, app: str) -> str:
        return f"http://127.0.0.1:{self.port}/{app}"
