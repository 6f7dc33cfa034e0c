"""CORS for both transports, from `server.cors_allowed_origins`.

One setting governs the HTTP API (aiohttp-cors) and Socket.IO (engineio's
Origin check), so a page served from another origin (a Vite dev server, an
app domain in front of an API domain) can use either one. Empty means same
origin only: no CORS headers. Credentials are never allowed: chatsock's
tokens travel in the Socket.IO `auth` payload and `Authorization`, never in
cookies, and `["*"]` with credentials would let any site act as its visitor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp_cors
from aiohttp import web

from chatsock.config import Settings

# Request headers a browser client of the API sends.
ALLOWED_HEADERS = ("Content-Type", "Accept", "Last-Event-ID", "Authorization")
# Response headers the page may read: the ids of a stream it started.
EXPOSED_HEADERS = ("X-Stream-Id", "X-Session-Id", "X-Message-Id")
PREFLIGHT_MAX_AGE_S = 600


def normalised(origins: Iterable[str]) -> list[str]:
    """Origins as browsers send them: lower case, no trailing slash."""
    return [origin.strip().rstrip("/").lower() for origin in origins]


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
    listed = ["*"] if "*" in origins else normalised(origins)
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in listed})
    for route in routes:
        cors.add(route)


class ListedOrOwnOrigin:
    """engineio's Origin check for an explicit list: a listed origin, or the
    server's own, so the page this server serves keeps connecting.

    The own origin is worked out as engineio does for same-origin-only
    (scheme and Host, or X-Forwarded-Proto/-Host from a proxy); a browser
    cannot set those headers on a cross-origin request.
    """

    def __init__(self, origins: Iterable[str]) -> None:
        self.origins = frozenset(normalised(origins))

    def __call__(self, origin: str | None, environ: Mapping[str, Any]) -> bool:
        if not origin:
            return False
        origin = origin.rstrip("/").lower()
        return origin in self.origins or origin in own_origins(environ)


def own_origins(environ: Mapping[str, Any]) -> set[str]:
    """The origins the page of this server has, seen from a request's WSGI environ."""
    host = environ.get("HTTP_HOST")
    if not host:
        return set()
    scheme = environ.get("wsgi.url_scheme", "http")
    found = {f"{scheme}://{host}".lower()}
    if "HTTP_X_FORWARDED_PROTO" in environ or "HTTP_X_FORWARDED_HOST" in environ:
        proto = environ.get("HTTP_X_FORWARDED_PROTO", scheme).split(",")[0].strip()
        fwd_host = environ.get("HTTP_X_FORWARDED_HOST", host).split(",")[0].strip()
        found.add(f"{proto}://{fwd_host}".lower())
    return found


def socketio_cors(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `socketio.AsyncServer`: its Origin check and CORS headers.

    engineio's `cors_credentials` defaults to True, which with `*` echoes
    any Origin *and* allows credentials; chatsock never allows them.
    """
    origins = settings.server.cors_allowed_origins
    allowed: str | ListedOrOwnOrigin | None
    if not origins:
        allowed = None  # engineio: the server's own origin only
    elif "*" in origins:
        allowed = "*"
    else:
        allowed = ListedOrOwnOrigin(origins)
    return {"cors_allowed_origins": allowed, "cors_credentials": False}
