"""The fast path both HTTP providers share: the SDK opens, chatsock parses.

The official SDK builds the request, authenticates, retries the initial
connection and maps HTTP errors to its exception types. The streamed body is
then read as raw bytes and parsed by sse.py and orjson, which costs a
fraction of the SDKs' typed stream objects (shared/FACTS.md). A provider
supplies how to open the response and an `EventReader` for its event format.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, Protocol

import httpx2

from chatsock.providers.base import (
    ChatRequest,
    Delta,
    Provider,
    ProviderHTTPError,
    ProviderStreamError,
)
from chatsock.providers.errors import ErrorMapper, UpstreamEventError
from chatsock.providers.sse import SSEParser


class EventReader(Protocol):
    """The state of one streamed reply in one provider's event format."""

    finished: bool  # the upstream said the reply is over ([DONE], message_stop)

    def read(self, event: str, data: str) -> str | None:
        """Text to yield for one event, or None; UpstreamEventError for errors."""

    def final(self) -> Delta | None:
        """The closing delta (finish reason, usage); None when the reply was cut short."""


class SSEStreamProvider(Provider):
    """A provider whose SDK hands over a raw server-sent-events response."""

    # The SDK's exception types for an HTTP error status and for a failed connection.
    status_error: ClassVar[type[Exception]]
    connection_error: ClassVar[type[Exception]]
    # Completes "the stream from <base_url> ..." when the reply was cut short.
    cut_short: ClassVar[str]

    base_url: str
    _errors: ErrorMapper

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
                async for raw in response.http_response.aiter_bytes():
                    for event, data in parser.feed(raw):
                        text = reader.read(event, data)
                        if text:
                            started = True
                            yield Delta(text)
                        elif reader.finished:
                            break
                    if reader.finished:
                        break
                else:
                    for event, data in parser.close():
                        text = reader.read(event, data)
                        if text:
                            yield Delta(text)
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
            raise self._errors.stream_event(str(exc), retryable=exc.retryable) from None
        if refused is not None:
            raise refused
        final = reader.final()
        if final is None:
            raise ProviderStreamError(
                f"the stream from {self.base_url} {self.cut_short}",
                provider=self.name,
                retryable=True,
            )
        yield final
