"""The fast path both HTTP providers share: the SDK opens, chatsock parses.

The official SDK builds the request, authenticates, retries the initial
connection and maps HTTP errors to its exception types. Its httpx2 client
sends through aiohttp (transport.py), so the streamed body arrives one TCP
read per chunk without httpcore and anyio in between; the bytes are parsed
by sse.py and orjson, a fraction of the cost of the SDKs' typed stream
objects (shared/FACTS.md). A provider supplies how to open the response and
an `EventReader` for its event format.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from abc import abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, Protocol

import aiohttp
import httpx2

from chatsock.providers.base import (
    ChatRequest,
    Delta,
    Provider,
    ProviderHTTPError,
)
from chatsock.providers.errors import ErrorMapper, UpstreamEventError
from chatsock.providers.sse import SSEParser
from chatsock.providers.transport import AiohttpTransport, env_proxy_configured
from chatsock.store.urls import mask_url, password_forms, without_userinfo

log = logging.getLogger(__name__)

# A stream logs at most this many distinct ignored kinds (then one line saying
# there were more), so an upstream that invents a type per event cannot flood the log.
MAX_IGNORED_NOTES = 16


# How long a finished stream waits for the rest of its body (the chunked
# terminator, which follows the last event at once): read to its end, the
# connection goes back to the pool; cut short, it is closed.
DRAIN_SECONDS = 0.05


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Read and drop what is left of a body whose closing event came."""
    with contextlib.suppress(httpx2.TransportError, TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in chunks:
                pass


class EventReader(Protocol):
    """The state of one streamed reply in one provider's event format."""

    finished: bool  # the upstream said the reply is over ([DONE], message_stop)
    # Reasoning read by the last `read` and not yet taken ("" when none): the
    # stream yields it, before that event's text, as a reasoning delta.
    thought: str

    def read(self, event: str, data: str) -> str | None:
        """One event: its text (non-empty), "" for activity without text (reasoning,
        whose text goes to `thought`; tool calls), or None for nothing;
        UpstreamEventError for errors."""

    def final(self) -> Delta | None:
        """The closing delta (finish reason, usage); None when the reply was cut short."""


class IgnoredParts:
    """What one stream drops (tool calls, refusals, unknown types, non-text content).

    Each kind is logged once per stream with the provider's name: the user never
    sees these parts, an operator should know they came. Upstream values are
    never logged, only their type names, escaped.
    """

    __slots__ = ("_provider", "_seen")

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self._seen: set[str] = set()

    def note(self, kind: str, detail: str = "", *, level: int = logging.INFO) -> None:
        """Log `kind` (with `detail` of its first occurrence) unless already logged."""
        if kind in self._seen or len(self._seen) > MAX_IGNORED_NOTES:
            return
        self._seen.add(kind)
        if len(self._seen) > MAX_IGNORED_NOTES:
            kind, detail, level = "more kinds", "not logged for this stream", logging.INFO
        log.log(
            level,
            "provider %s: ignored %s%s (chatsock streams text only)",
            self._provider,
            kind,
            f": {detail}" if detail else "",
        )


def type_name(value: object) -> str:
    """An upstream type name, safe to log: escaped and short."""
    return repr(value)[:40] if isinstance(value, str) else f"<{type(value).__name__}>"


# Local servers ignore the key, and a missing one should give the API's own 401;
# the SDKs refuse to build a client without one (or search for credentials).
PLACEHOLDER_API_KEY = "no-key"


def sdk_timeout(connect: float, first_token: float, idle: float) -> httpx2.Timeout:
    """The SDK's timeouts. The runner enforces first-token and idle timeouts; the read
    timeout is only a backstop for callers without a runner (e.g. `chatsock check`)."""
    return httpx2.Timeout(max(first_token, idle) + 10.0, connect=connect)


def with_basic_auth(url: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
    """`url` without its user info, and `headers` carrying it as Basic credentials.

    httpx would send `user:pass@` as Basic auth too, but would also keep it in
    every URL it logs or puts in an exception; this way the SDK never sees it.
    An explicit Authorization header wins, as it does over the API key.
    """
    bare, user, password = without_userinfo(url)
    if user is None or any(name.lower() == "authorization" for name in headers):
        return bare, headers
    pair = f"{user}:{password or ''}".encode()
    return bare, {**headers, "Authorization": f"Basic {base64.b64encode(pair).decode()}"}


class SSEStreamProvider(Provider):
    """A provider whose SDK hands over a raw server-sent-events response."""

    default_base_url: ClassVar[str]

    # The SDK's exception types for an HTTP error status and for a failed connection.
    status_error: ClassVar[type[Exception]]
    connection_error: ClassVar[type[Exception]]
    # Completes "the stream from <provider> ..." when the reply was cut short.
    cut_short: ClassVar[str]

    def __init__(
        self,
        name: str,
        *,
        default_model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        first_token_timeout: float = 30.0,
        idle_timeout: float = 60.0,
        connect_timeout: float = 10.0,
        max_retries: int = 2,
        headers: dict[str, str] | None = None,
        http_session: aiohttp.ClientSession | None = None,
    ) -> None:
        """`http_session`: an aiohttp session to share (its owner closes it); without
        one the provider opens its own on first use and closes it in `aclose()`."""
        super().__init__(
            name,
            default_model=default_model,
            first_token_timeout=first_token_timeout,
            idle_timeout=idle_timeout,
        )
        raw_url = (base_url or self.default_base_url).rstrip("/")
        # The base URL as logs and `chatsock check` show it; clients never see it.
        self.base_url = mask_url(raw_url, keep_user=False)
        self.has_api_key = bool(api_key)
        self._errors = ErrorMapper(name, self.base_url, [api_key, *password_forms(raw_url)])
        bare_url, headers = with_basic_auth(raw_url, headers or {})
        timeout = sdk_timeout(connect_timeout, first_token_timeout, idle_timeout)
        # What the subclass passes to its SDK client's constructor.
        self._client_options: dict[str, Any] = {
            "base_url": bare_url,
            "api_key": api_key or PLACEHOLDER_API_KEY,
            "timeout": timeout,
            "max_retries": max_retries,
            "default_headers": headers or None,
        }
        if not env_proxy_configured():
            # The SDK's httpx2 client sends through aiohttp (transport.py), with
            # the SDK's own client defaults otherwise: redirects followed, timeouts.
            self._client_options["http_client"] = httpx2.AsyncClient(
                transport=AiohttpTransport(http_session), timeout=timeout, follow_redirects=True
            )

    @abstractmethod
    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body for `request` (without `stream`)."""

    @abstractmethod
    def _open(self, body: dict[str, Any]) -> AbstractAsyncContextManager[Any]:
        """Start the streaming request; the response has `.http_response`."""

    @abstractmethod
    def _reader(self) -> EventReader: ...

    async def stream(self, request: ChatRequest) -> AsyncGenerator[Delta, None]:
        body = self.request_body(request)
        parser = SSEParser()
        reader = self._reader()
        started = False
        refused: ProviderHTTPError | None = None
        try:
            async with self._open(body) as response:
                chunks = response.http_response.aiter_bytes()
                async for raw in chunks:
                    for event, data in parser.feed(raw):
                        text = reader.read(event, data)
                        if text is not None:
                            if reader.thought:
                                yield Delta(reasoning=reader.thought)
                                reader.thought = ""
                                if not text:
                                    continue
                            # "" is an activity delta: the runner's idle deadline moves.
                            started = started or bool(text)
                            yield Delta(text)
                        if reader.finished:
                            break
                    if reader.finished:
                        break
                else:
                    for event, data in parser.close():
                        text = reader.read(event, data)
                        if text is not None:
                            if reader.thought:
                                yield Delta(reasoning=reader.thought)
                                reader.thought = ""
                                if not text:
                                    continue
                            started = started or bool(text)
                            yield Delta(text)
                if reader.finished:
                    await _drain(chunks)
        except self.status_error as exc:
            # Raised below, outside this block, so no traceback carries the SDK's
            # error: its message quotes the upstream body, which may echo the key.
            status: Any = exc
            refused = self._errors.http_status(
                status.status_code, status.response.headers, status.body
            )
        except self.connection_error as exc:
            raise self._errors.connection(exc) from exc
        except httpx2.TransportError as exc:
            raise self._errors.broken_stream(exc, started=started) from exc
        except UpstreamEventError as exc:
            raise self._errors.stream_event(
                str(exc), retryable=exc.retryable, started=started
            ) from None
        if refused is not None:
            raise refused
        final = reader.final()
        if final is None:
            raise self._errors.cut_short(self.cut_short, started=started)
        yield final
