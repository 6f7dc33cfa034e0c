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
    }
)


class ChatsockError(Exception):
    """An error with a protocol code and a message meant for the client."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
