"""SDK and transport failures of HTTP providers, mapped into the ProviderError tree.

The openai and anthropic SDKs raise look-alike exception classes; both sit
on httpx2, whose errors surface unwrapped once the body is being read. The
functions here build the chatsock error for each case with a message that
says what happened and where (the base URL), and never contains the API key.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

import httpx2

from chatsock.providers.base import (
    ProviderConnectionError,
    ProviderError,
    ProviderHTTPError,
    ProviderStreamError,
    ProviderTimeout,
)

# HTTP statuses worth retrying later (besides every 5xx).
RETRYABLE_STATUSES = frozenset({408, 409, 429})
_MAX_UPSTREAM_MESSAGE = 300


class UpstreamEventError(Exception):
    """Raised by a stream reader: the upstream sent an error event or a malformed one."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


# What a reader's field access on an unexpected JSON shape raises.
MALFORMED = (ValueError, TypeError, AttributeError, KeyError, IndexError)


class ErrorMapper:
    """Builds ProviderErrors for one provider: its name, base URL and secret to redact."""

    __slots__ = ("_secret", "base_url", "provider")

    def __init__(self, provider: str, base_url: str, secret: str | None) -> None:
        self.provider = provider
        self.base_url = base_url
        self._secret = secret

    def redact(self, text: str) -> str:
        """`text` with the API key, should an upstream echo it, replaced by ***."""
        if self._secret:
            text = text.replace(self._secret, "***")
        return text

    def http_status(
        self, status: int, headers: Mapping[str, str], body: object
    ) -> ProviderHTTPError:
        """The provider answered with an error status before streaming."""
        detail = upstream_message(body)
        message = f"HTTP {status} from {self.base_url}" + (f": {detail}" if detail else "")
        return ProviderHTTPError(
            self.redact(message),
            provider=self.provider,
            status=status,
            retryable=status in RETRYABLE_STATUSES or status >= 500,
            retry_after=parse_retry_after(headers),
        )

    def connection(self, exc: BaseException) -> ProviderConnectionError:
        """The request never got a response: refused, DNS, TLS, timeout."""
        return ProviderConnectionError(
            self.redact(f"{connect_failure(exc)} {self.base_url}"),
            provider=self.provider,
            retryable=True,
        )

    def broken_stream(self, exc: BaseException, *, started: bool) -> ProviderError:
        """Reading the body failed after HTTP 200: a reset, truncation or read timeout.

        `started`: text had been yielded, so the chain must not fail over.
        """
        if isinstance(exc, httpx2.TimeoutException):
            return ProviderTimeout(
                f"no bytes from {self.base_url} within the read timeout",
                provider=self.provider,
                first_token=not started,
            )
        reason = _innermost(exc) or type(exc).__name__
        return self.stream_failed(
            f"the stream from {self.base_url} broke: {reason}", retryable=True, started=started
        )

    def stream_event(self, what: str, *, retryable: bool, started: bool) -> ProviderStreamError:
        """The provider reported an error (or sent a malformed event) after HTTP 200."""
        return self.stream_failed(
            f"{what} (from {self.base_url})", retryable=retryable, started=started
        )

    def stream_failed(self, message: str, *, retryable: bool, started: bool) -> ProviderStreamError:
        """The body failed; before any text (`started` False) the chain fails over."""
        return ProviderStreamError(
            self.redact(message),
            provider=self.provider,
            retryable=retryable,
            before_text=not started,
        )


def upstream_message(body: object) -> str:
    """The human-readable message of an OpenAI- or Anthropic-shaped error body."""
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping):
            message = inner.get("message")
            kind = inner.get("type")
            text = str(message) if message else ""
            if kind and str(kind) not in text:
                text = f"{kind}: {text}" if text else str(kind)
            return text[:_MAX_UPSTREAM_MESSAGE]
        if isinstance(inner, str):
            return inner[:_MAX_UPSTREAM_MESSAGE]
    if isinstance(body, str | bytes):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        return text.strip()[:_MAX_UPSTREAM_MESSAGE]
    return ""


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def connect_failure(exc: BaseException) -> str:
    """A short phrase for why connecting failed, to be followed by the base URL."""
    for cause in _chain(exc):
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused at"
        if isinstance(cause, httpx2.ConnectTimeout):
            return "timed out connecting to"
        if isinstance(cause, httpx2.TimeoutException):
            return "timed out waiting for a response from"
        if isinstance(cause, socket.gaierror):
            return "could not resolve the host of"
        if isinstance(cause, ssl.SSLError):
            return f"TLS failed ({cause.reason or cause}) with"
    reason = _innermost(exc)
    return f"could not connect ({reason}) to" if reason else "could not connect to"


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _innermost(exc: BaseException) -> str:
    for cause in reversed(_chain(exc)):
        text = str(cause)
        if text:
            return text[:_MAX_UPSTREAM_MESSAGE]
    return ""
