"""CORS for the HTTP API, allowed for the same origins as Socket.IO.

`server.cors_allowed_origins` governs both transports, so a page served
from another origin (a Vite dev server, an app domain in front of an API
domain) can use either one. Empty means same-origin only: no CORS headers.
"""

from __future__ import annotations

from collections.abc import Iterable

import aiohttp_cors
from aiohttp import web

# Request headers a browser client of the API sends.
ALLOWED_HEADERS = ("Content-Type", "Accept", "Last-Event-ID", "Authorization")
# Response headers the page may read: the ids of a stream it started.
EXPOSED_HEADERS = ("X-Stream-Id", "X-Session-Id", "X-Message-Id")
PREFLIGHT_MAX_AGE_S = 600


def allow_origins(
    app: web.Application, origins: list[str], routes: Iterable[web.AbstractRoute]
) -> None:
    """Answer preflights and add CORS headers on `routes` for `origins` (`["*"]`: any)."""
    if not origins:
        return
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
        allow_credentials=False,
        allow_headers=ALLOWED_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        max_age=PREFLIGHT_MAX_AGE_S,
    )
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in origins})
    for route in routes:
        cors.add(route)
