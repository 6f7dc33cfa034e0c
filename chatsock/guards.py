"""HTTP guards around every route: the Host allowlist, security headers, /metrics access.

`install_guards` runs before any other middleware is added, so a refused
Host or an unauthorised scrape never reaches a handler: the Socket.IO
endpoint, CORS preflights and the API included (docs/security.md).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
from typing import Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from chatsock import jsoncodec, protocol
from chatsock.config import ServerConfig, Settings
from chatsock.logsafe import shown
from chatsock.web import PROBES, is_page

log = logging.getLogger(__name__)

METRICS_PATH: Final = "/metrics"
LOOPBACK_NAMES: Final = ("localhost", "127.0.0.1", "[::1]")
# A Host value: a DNS name or IPv4 address, or a bracketed IPv6 address, and a port.
_HOST: Final = re.compile(r"(?P<name>[a-z0-9_.-]+|\[[0-9a-f:.]+\])(?::(?P<port>[0-9]{1,5}))?")
_SHOWN_HOST_CHARS: Final = 100


def split_host(value: str) -> tuple[str, int | None] | None:
    """`name`, `name:port`, `[v6]` or `[v6]:port` as (lower-case name, port); None if malformed."""
    match = _HOST.fullmatch(value.strip().lower())
    if match is None:
        return None
    port = match["port"]
    if port is not None and int(port) > 65535:
        return None
    name = match["name"].rstrip(".")  # "localhost." is the same name as "localhost"
    if not name:
        return None
    return name, None if port is None else int(port)


def _is_loopback(bind: str) -> bool:
    if bind.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind.strip("[]")).is_loopback
    except ValueError:
        return False


class HostAllowlist:
    """The `Host` header values a server answers to: a guard against DNS rebinding."""

    def __init__(self, entries: list[str]) -> None:
        self.any_port: set[str] = set()
        self.exact: set[tuple[str, int]] = set()
        for entry in entries:
            parts = split_host(entry)
            if parts is None:
                raise ValueError(
                    f"server.allowed_hosts: {entry!r} is not a host name; use `name`, "
                    "`name:port`, `[ipv6]` or `[ipv6]:port` (or '*' for any host)"
                )
            name, port = parts
            if port is None:
                self.any_port.add(name)
            else:
                self.exact.add((name, port))

    @classmethod
    def from_settings(cls, server: ServerConfig) -> HostAllowlist | None:
        """The allowlist `server.allowed_hosts` describes; None when any host is served.

        Empty means the loopback names when bound to a loopback address (what a
        browser on the same machine sends), else any host.
        """
        entries = server.allowed_hosts
        if "*" in entries:
            return None
        if not entries:
            return cls(list(LOOPBACK_NAMES)) if _is_loopback(server.host) else None
        return cls(entries)

    def allows(self, host: str | None) -> bool:
        parts = split_host(host) if host is not None else None
        if parts is None:
            return False
        name, port = parts
        return name in self.any_port or (port is not None and (name, port) in self.exact)


def host_guard(allowlist: HostAllowlist) -> Middleware:
    """Answer 400 to a request whose Host is not listed; probes are exempt.

    Kubernetes and Docker probes send the pod's address as Host, so /healthz
    and /readyz answer whatever the Host.
    """

    @web.middleware
    async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get(hdrs.HOST)
        if request.path in PROBES or allowlist.allows(host):
            return await handler(request)
        what = shown(host or "", _SHOWN_HOST_CHARS) if host is not None else "(none)"
        log.info("%s %s refused: Host %s is not allowed", request.method, shown(request.path),
                 what)  # fmt: skip
        return _error(400, "invalid_request", f"Host: {what} not allowed (server.allowed_hosts)")

    return check_host


def metrics_guard(token: str | None, *, elsewhere: bool = False) -> Middleware:
    """/metrics needs `Authorization: Bearer <token>` when a token is set; with
    `elsewhere` (server.metrics_port) it is not served on this app at all."""
    expected = token.encode() if token else None

    @web.middleware
    async def check_scrape(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != METRICS_PATH:
            return await handler(request)
        if elsewhere:
            return _error(404, "not_found", "path: /metrics is served on server.metrics_port")
        if expected is not None and not _bearer_matches(request, expected):
            log.info("GET /metrics from %s refused: no valid bearer token", shown(request.remote))
            response = _error(401, "unauthorized", "/metrics needs the metrics bearer token")
            response.headers[hdrs.WWW_AUTHENTICATE] = 'Bearer realm="chatsock-metrics"'
            return response
        return await handler(request)

    return check_scrape


def _bearer_matches(request: web.Request, expected: bytes) -> bool:
    scheme, _, given = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    # compare_digest: the time taken does not tell how much of the token matched.
    given_bytes = given.strip().encode("utf-8", "surrogateescape")
    return scheme.lower() == "bearer" and hmac.compare_digest(given_bytes, expected)


def page_csp(host: str | None) -> str:
    """The page's Content-Security-Policy: its own scripts, styles and sockets only.

    'self' covers ws:/wss: to the same host in CSP3 browsers; the explicit
    ws://host and wss://host serve older ones. The Host is echoed only when
    it is a well-formed host, so it cannot add a directive.
    """
    sockets = ""
    if host is not None and split_host(host) is not None:
        safe = host.strip().lower()
        sockets = f" ws://{safe} wss://{safe}"
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        f"connect-src 'self'{sockets}; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    )


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every routed response, streamed ones and WebSocket upgrades
    included. aiohttp has already set `Server: Python/x aiohttp/y`; it is dropped."""
    response.headers.popall(hdrs.SERVER, None)
    response.headers["X-Content-Type-Options"] = "nosniff"
    if is_page(request.path):
        response.headers["Content-Security-Policy"] = page_csp(request.headers.get(hdrs.HOST))
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        protocol.error_body(code, message), status=status, dumps=jsoncodec.dumps
    )


def install_guards(app: web.Application, settings: Settings) -> None:
    """Add the guards to `app`; call before any other middleware is added.

    With `server.metrics_port` /metrics moves to its own site, started and
    stopped with `app` (chatsock/metrics_site.py).
    """
    server = settings.server
    allowlist = HostAllowlist.from_settings(server)
    if allowlist is not None:
        app.middlewares.append(host_guard(allowlist))
    token = server.metrics_token.get_secret_value() if server.metrics_token else None
    if token is not None or server.metrics_port is not None:
        app.middlewares.append(metrics_guard(token, elsewhere=server.metrics_port is not None))
    app.on_response_prepare.append(security_headers)
    if server.metrics_port is not None:
        # Imported here: chatsock.metrics_site builds on this module.
        from chatsock.metrics_site import METRICS_SITE, MetricsSite

        site = app[METRICS_SITE] = MetricsSite(server.host, server.metrics_port, token)
        app.cleanup_ctx.append(site.serve)
