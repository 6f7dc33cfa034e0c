"""SDK and transport failures of HTTP providers, mapped into the ProviderError tree.

The openai and anthropic SDKs raise look-alike exception classes; both sit
on httpx2, whose errors (raised by transport.py for aiohttp's) surface
unwrapped once the body is being read. The
functions here build the chatsock error for each case. Its `message`, which
clients see, says what happened and names the provider; its `detail`, for
operators, names the base URL with its credentials masked. Neither quotes an
SDK or transport exception's text to a client, nor ever contains the API key.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
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

# Builds one sentence around where the failure happened: the provider or its URL.
Phrase = Callable[[str], str]


class ErrorMapper:
    """Builds ProviderErrors for one provider: its name, shown URL and secrets to redact."""

    __slots__ = ("_secrets", "provider", "shown_url", "where")

    def __init__(self, provider: str, shown_url: str, secrets: Sequence[str | None]) -> None:
        """`shown_url`: the base URL with credentials masked; `secrets`: the API key
        and the URL's credentials, replaced by *** should an upstream echo them."""
        self.provider = provider
        self.where = f"provider {provider!r}"
        self.shown_url = shown_url
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """`text` with every secret of this provider replaced by ***."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _texts(self, phrase: Phrase) -> dict[str, str]:
        """`message` (naming the provider) and `detail` (naming the URL), redacted."""
        return {
            "message": self.redact(phrase(self.where)),
            "detail": self.redact(phrase(self.shown_url)),
        }

    def http_status(
        self, status: int, headers: Mapping[str, str], body: object
    ) -> ProviderHTTPError:
        """The provider answered with an error status before streaming."""
        said = upstream_message(body)
        tail = f": {said}" if said else ""
        return ProviderHTTPError(
            **self._texts(lambda at: f"HTTP {status} from {at}{tail}"),
            provider=self.provider,
            status=status,
            retryable=status in RETRYABLE_STATUSES or status >= 500,
            retry_after=parse_retry_after(headers),
        )

    def connection(self, exc: BaseException) -> ProviderConnectionError:
        """The request never got a response: refused, DNS, TLS, timeout."""
        public = connect_failure(exc, type(_chain(exc)[-1]).__name__)
        private = connect_failure(exc, _innermost(exc))
        return ProviderConnectionError(
            message=self.redact(f"{public} {self.where}"),
            detail=self.redact(f"{private} {self.shown_url}"),
            provider=self.provider,
            retryable=True,
        )

    def broken_stream(self, exc: BaseException, *, started: bool) -> ProviderError:
        """Reading the body failed after HTTP 200: a reset, truncation or read timeout.

        `started`: text had been yielded, so the chain must not fail over.
        """
        if isinstance(exc, httpx2.TimeoutException):
            return ProviderTimeout(
                **self._texts(lambda at: f"no bytes from {at} within the read timeout"),
                provider=self.provider,
                first_token=not started,
            )
        # The exception's own text goes to the log only: clients get its type.
        # transport.py's errors say what broke themselves; the innermost cause
        # is often a bare parser message.
        kind = type(exc).__name__
        reason = str(exc)[:_MAX_UPSTREAM_MESSAGE] or _innermost(exc) or kind
        return ProviderStreamError(
            message=self.redact(f"the stream from {self.where} broke: {kind}"),
            detail=self.redact(f"the stream from {self.shown_url} broke: {reason}"),
            provider=self.provider,
            retryable=True,
            before_text=not started,
        )

    def stream_event(self, what: str, *, retryable: bool, started: bool) -> ProviderStreamError:
        """The provider reported an error (or sent a malformed event) after HTTP 200."""
        return self.stream_failed(lambda at: f"{what} (from {at})", retryable, started)

    def cut_short(self, how: str, *, started: bool) -> ProviderStreamError:
        """The body ended without the provider's closing event."""
        return self.stream_failed(lambda at: f"the stream from {at} {how}", True, started)

    def stream_failed(self, phrase: Phrase, retryable: bool, started: bool) -> ProviderStreamError:
        """The body failed; before any text (`started` False) the chain fails over."""
        return ProviderStreamError(
            **self._texts(phrase),
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


def connect_failure(exc: BaseException, reason: str) -> str:
    """A short phrase for why connecting failed, to be followed by where.

    `reason` fills in an unrecognised failure: the exception's type for clients,
    its text for operators.
    """
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
            # `reason` is OpenSSL's code (CERTIFICATE_VERIFY_FAILED), never a URL.
            return f"TLS failed ({cause.reason or 'handshake'}) with"
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
