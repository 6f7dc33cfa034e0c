"""The end of a stream as clients see it: chat_complete or chat_stream_error.

The stored status and the terminal event follow from the stream's end reason
(lifecycle.py), never from what happened to arrive last.
"""

from __future__ import annotations

import time

from chatsock import protocol
from chatsock.errors import ChatsockError
from chatsock.lifecycle import EndReason
from chatsock.providers.base import ProviderError
from chatsock.store.models import MessageStatus, StreamRecord, Terminal
from chatsock.stream import ActiveStream


def outcome(stream: ActiveStream, text: str) -> tuple[MessageStatus, Terminal]:
    """How a stream ended: the stored message status and the terminal event."""
    record = stream.record
    reason = stream.life.reason
    if reason in (EndReason.COMPLETE, EndReason.STOPPED):
        stopped = reason is EndReason.STOPPED
        usage = stream.usage
        payload = protocol.complete(
            stream_id=record.stream_id,
            session_id=record.session_id,
            message_id=record.message_id,
            full_response=text,
            stopped=stopped,
            finish_reason="stopped" if stopped else (stream.finish_reason or "stop"),
            deltas=stream.count,
            duration=time.monotonic() - stream.started,
            provider=stream.provider,
            model=stream.model,
            usage=(
                protocol.usage(usage.input_tokens, usage.output_tokens, usage.reasoning_tokens)
                if usage
                else None
            ),
            persist_failed=False,
            reasoning_chars=sum(map(len, stream.reasoning_parts)),
            reasoning_ms=stream.reasoning_ms(),
        )
        status: MessageStatus = "stopped" if stopped else "complete"
        protocol.regenerating(payload, record.regenerates)
        return status, Terminal(status, protocol.COMPLETE, payload)
    failure = stream.life.failure
    if reason is EndReason.SHUTDOWN:
        code, message, retryable = "server_shutdown", "the server is shutting down", True
    elif reason is EndReason.TAKEN:
        code, retryable = "worker_lost", True
        message = "another worker took this stream for lost while its owner was cut off"
    elif isinstance(failure, ProviderError):
        code, retryable = failure.code, failure.retryable
        named = failure.provider and not failure.message.startswith(f"{failure.provider}:")
        message = f"{failure.provider}: {failure.message}" if named else failure.message
    elif isinstance(failure, ChatsockError):
        code, message, retryable = failure.code, failure.message, failure.retryable
    else:
        code, message, retryable = "internal", "the stream ended unexpectedly", False
    return "error", error_terminal(record, code, message, text, retryable=retryable)


def error_terminal(
    record: StreamRecord, code: str, message: str, partial: str, *, retryable: bool
) -> Terminal:
    """A `chat_stream_error` terminal for `record`."""
    payload = protocol.stream_error(
        stream_id=record.stream_id,
        session_id=record.session_id,
        code=code,
        error=message,
        partial=partial,
        retryable=retryable,
    )
    protocol.regenerating(payload, record.regenerates)
    return Terminal("error", protocol.STREAM_ERROR, payload)
