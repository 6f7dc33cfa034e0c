"""An httpx2 transport that sends the SDKs' requests through aiohttp.

The SDKs build every request, authenticate, retry and map HTTP errors on top
of httpx2; below that, httpcore and anyio cost tens of microseconds per body
chunk, about a quarter of a worker's time at 10k tokens/s (issue 10). A
custom transport is httpx's supported extension point: it receives the built
`httpx2.Request` and returns an `httpx2.Response`. This one performs the
request with an aiohttp `ClientSession` and streams the body with
`readany()`, one await per TCP read, whatever it holds.

aiohttp's failures are raised as the httpx2 exceptions httpcore would raise,
chained to the original (the SDKs retry and classify on these, and
errors.py looks down the chain for the socket-level cause).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.request import getproxies

import aiohttp
import httpx2
from yarl import URL

__all__ = ["AiohttpBody", "AiohttpTransport", "env_proxy_configured", "transport_error"]

# As the SDKs' own httpx2 pool: enough for every stream a worker carries.
MAX_CONNECTIONS = 1000

_Kinds = type[BaseException] | tuple[type[BaseException], ...]

# aiohttp failure -> the httpx2 exception httpcore raises for it; first match wins.
_ERRORS: tuple[tuple[_Kinds, type[httpx2.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx2.ConnectTimeout),
    (TimeoutError, httpx2.ReadTimeout),  # aiohttp's socket read timeouts subclass it
    ((aiohttp.ClientProxyConnectionError, aiohttp.ClientHttpProxyError), httpx2.ProxyError),
    (aiohttp.ClientConnectorError, httpx2.ConnectError),
    ((aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError), httpx2.UnsupportedProtocol),
    (
        (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError),
        httpx2.RemoteProtocolError,
    ),
)


def transport_error(exc: BaseException) -> httpx2.TransportError:
    """The httpx2 exception for an aiohttp (or socket) failure; raise it `from exc`.

    Its text is aiohttp's on one line (aiohttp's parser errors span several).
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    for kinds, error in _ERRORS:
        if isinstance(exc, kinds):
            return error(text)
    return httpx2.ReadError(text)


def env_proxy_configured() -> bool:
    """Whether HTTP_PROXY, HTTPS_PROXY or ALL_PROXY is set (as httpx2 reads them).

    The transport does not do proxies; a provider then keeps the SDK's own
    httpx2 client, which honours them and NO_PROXY.
    """
    proxies = getproxies()
    return any(proxies.get(scheme) for scheme in ("http", "https", "all"))


# What a request or a body read can raise besides cancellation.
_FAILURES = (aiohttp.ClientError, OSError, TimeoutError)


class AiohttpBody(httpx2.AsyncByteStream):
    """A streamed response body: each chunk is what one TCP read brought."""

    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        while True:
            try:
                chunk = await content.readany()
            except _FAILURES as exc:
                raise transport_error(exc) from exc
            if not chunk:
                return
            yield chunk

    async def aclose(self) -> None:
        # A body read to its end lets the connection be reused; any other
        # close drops it, so the upstream sees the client go and stops generating.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class AiohttpTransport(httpx2.AsyncBaseTransport):
    """Sends httpx2 requests with aiohttp: give it to the SDK as `httpx2.AsyncClient(transport=)`.

    With `session`, requests go through that shared session, which its owner
    closes; without, the transport opens its own on first use (inside the
    running loop, as aiohttp requires) and closes it in `aclose()`.
    """

    def __init__(self, session: aiohttp.ClientSession | None = None) -> None:
        self._session = session
        self._owns_session = session is None

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        session = self._session or self._open_session()
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        try:
            content = request.content
        except httpx2.RequestNotRead:
            content = await request.aread()
        try:
            response = await session.request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=request.headers.multi_items(),
                data=content or None,
                allow_redirects=False,  # httpx2's client follows them, as it is told
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeouts.get("pool"),
                    sock_connect=timeouts.get("connect"),
                    sock_read=timeouts.get("read"),
                ),
            )
        except _FAILURES as exc:
            raise transport_error(exc) from exc
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode("ascii", "replace")
        return httpx2.Response(
            response.status,
            headers=response.raw_headers,
            stream=AiohttpBody(response),
            request=request,
            extensions=extensions,
        )

    def _open_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=MAX_CONNECTIONS,
            # The SDKs' trust store: SSL_CERT_FILE / SSL_CERT_DIR, else the system's.
            ssl=httpx2.create_ssl_context(),
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # httpx2's client above keeps the cookies and decodes the body.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            # Not trust_env: it costs two thread hops per request (netrc, proxy
            # lookup); with a proxy configured the providers keep httpx2's path.
            trust_env=False,
        )
        return self._session

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()
