"""The one error type handlers turn into `{ok: false, error: {code, message}}`."""

from __future__ import annotations

from typing import Final

# Error codes used in acks, chat_stream_error and HTTP error bodies (docs/protocol.md).
ERROR_CODES: Final = frozenset(
    {
        "invalid_request",
        "not_found",
        "provider_unavailable",
        "provider_error",
        "timeout",
        "too_many_streams",
        "server_shutdown",
        "worker_lost",
        "store_unavailable",
        "internal",
        "log_unavailable",
        "stream_lost",
        "rate_limited",
        "unauthorized",
    }
)


class ChatsockError(Exception):
    """An error with a protocol code and a message meant for the client."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable or retry_after is not None
        # Seconds until a refused request (rate_limited) may succeed.
        self.retry_after = retry_after


def no_session(session_id: str) -> ChatsockError:
    """A session that does not exist, or is not the caller's: the same answer, so
    ids cannot be probed."""
    return ChatsockError("not_found", f"session_id: no session {session_id!r}")


def no_stream(stream_id: str) -> ChatsockError:
    """A stream that does not exist, or is not the caller's (as `no_session`)."""
    return ChatsockError("not_found", f"stream_id: no stream {stream_id!r}")


def stream_lost(stream_id: str) -> ChatsockError:
    """The store lost the stream's token log or record (a Redis failover to a replica
    that lagged, a flush): what was sent cannot be resumed. Reload the session."""
    return ChatsockError(
        "stream_lost",
        f"stream {stream_id}: the store lost its token log; reload the session",
    )
