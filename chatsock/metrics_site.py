"""/metrics on a port of its own (`server.metrics_port`), kept off the public one.

Scrapers address pods by IP, so this site checks no Host; keep its port
internal (docs/deployment.md) and set `server.metrics_token` as well if the
network is shared.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from chatsock.guards import METRICS_PATH, metrics_guard, security_headers

log = logging.getLogger(__name__)


def metrics_app(main_app: web.Application, token: str | None = None) -> web.Application:
    """An app serving only `main_app`'s /metrics (the token checked when given)."""
    # Imported here: chatsock.app imports the guards, which import this module.
    from chatsock.app import METRICS

    app = web.Application()
    app.middlewares.append(metrics_guard(token))
    app.on_response_prepare.append(security_headers)

    async def metrics(request: web.Request) -> web.Response:
        body, content_type = main_app[METRICS].render(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    app.router.add_get(METRICS_PATH, metrics)
    return app


class MetricsSite:
    """The metrics app's listening site, started and stopped with the main app."""

    def __init__(self, host: str, port: int, token: str | None) -> None:
        self.host = host
        self.port = port
        self.token = token

    async def serve(self, main_app: web.Application) -> AsyncIterator[None]:
        """A cleanup_ctx: listen on (host, port) while `main_app` runs.

        Port 0 picks a free port; `port` then holds the one bound.
        """
        runner = web.AppRunner(metrics_app(main_app, self.token))
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
            bound = runner.addresses[0]
            self.port = bound[1]
            log.info("/metrics served on %s:%d", self.host, self.port)
            yield
        finally:
            await runner.cleanup()


METRICS_SITE = web.AppKey("metrics_site", MetricsSite)
