"""The wire protocol: every event name and every payload sent to a client.

docs/protocol.md documents exactly what this module builds. Socket.IO events
and the HTTP/SSE API share these payloads.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, Final

from chatsock.store.models import Message, SessionInfo, StreamRecord

# Client -> server events.
CHAT_STREAM: Final = "chat_stream"
CHAT_STOP: Final = "chat_stop"
SESSION_JOIN: Final = "session_join"
CHAT_RESUME: Final = "chat_resume"
CHAT_REGENERATE: Final = "chat_regenerate"

# Server -> session room events.
STREAM_START: Final = "chat_stream_start"
TOKEN: Final = "chat_token"
# Only to clients that opted in (`reasoning: true`): the model's reasoning.
REASONING: Final = "chat_reasoning"
COMPLETE: Final = "chat_complete"
STREAM_ERROR: Final = "chat_stream_error"
SESSION_DELETED: Final = "session_deleted"

# Server -> one socket, just before the server disconnects it.
AUTH_EXPIRED: Final = "auth_expired"
SERVER_DRAINING: Final = "server_draining"

Payload = dict[str, Any]


def now_iso() -> str:
    """The current time, ISO 8601 in UTC (`...Z`)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


ROOM_PREFIX: Final = "session:"


def session_room(session_id: str) -> str:
    """The Socket.IO room of a session."""
    return ROOM_PREFIX + session_id


def session_of_room(room: str) -> str | None:
    """The session id of a session room; None for any other room."""
    return room[len(ROOM_PREFIX) :] if room.startswith(ROOM_PREFIX) else None


REASONING_ROOM_PREFIX: Final = "reasoning:"


def reasoning_room(session_id: str) -> str:
    """The room of a session's members that opted in to its reasoning (a subset of
    its session room: they get `chat_reasoning` besides everything else)."""
    return REASONING_ROOM_PREFIX + session_id


# -- acks ------------------------------------------------------------------
def ack_ok(**fields: Any) -> Payload:
    return {"ok": True, **fields}


def _error(code: str, message: str, retry_after: float | None, retryable: bool) -> Payload:
    """An error: `retryable` says the same request may succeed later (after
    `retry_after` s when given), e.g. on another worker during a deploy."""
    error: Payload = {
        "code": code,
        "message": message,
        "retryable": retryable or retry_after is not None,
    }
    if retry_after is not None:
        error["retry_after"] = retry_after_s(retry_after)
    return error


def retry_after_s(seconds: float) -> int:
    """Whole seconds to wait (at least 1), as `Retry-After` and `retry_after` say it."""
    return max(1, math.ceil(seconds))


def ack_error(
    code: str, message: str, retry_after: float | None = None, *, retryable: bool = False
) -> Payload:
    return {"ok": False, "error": _error(code, message, retry_after, retryable)}


def error_body(
    code: str, message: str, retry_after: float | None = None, *, retryable: bool = False
) -> Payload:
    """The HTTP API's error body."""
    return {"error": _error(code, message, retry_after, retryable)}


def auth_expired(reason: str) -> Payload:
    """Sent to a socket whose token expired, before it is disconnected: refresh the
    token, reconnect and `chat_resume`."""
    return {"code": "unauthorized", "reason": reason}


def server_draining(reason: str) -> Payload:
    """Sent to every socket of a worker that is draining (a rolling deploy), just
    before it is disconnected: reconnect (to another worker) and `chat_resume`
    each stream from the last seq received; the streams go on meanwhile."""
    return {"code": "server_draining", "reason": reason, "reconnect": True}


def stream_ack(
    stream_id: str,
    session_id: str,
    message_id: str,
    epoch: str | None = None,
    regenerates: str | None = None,
) -> Payload:
    """`epoch` names the stream's token log: a resume that passes it back is told
    `stream_lost` if the store lost that log meanwhile."""
    ack = ack_ok(stream_id=stream_id, session_id=session_id, message_id=message_id)
    if epoch:
        ack["epoch"] = epoch
    return regenerating(ack, regenerates)


def regenerating(payload: Payload, regenerates: str | None) -> Payload:
    """A regenerate's payloads name the message whose reply it replaces
    (`regenerates`, its `message_id`); other streams' read as they always did."""
    if regenerates is not None:
        payload["regenerates"] = regenerates
    return payload


# -- stream events ---------------------------------------------------------
def stream_start(
    stream_id: str,
    session_id: str,
    message_id: str,
    provider: str | None,
    model: str | None,
    regenerates: str | None = None,
) -> Payload:
    payload = {
        "stream_id": stream_id,
        "session_id": session_id,
        "message_id": message_id,
        "provider": provider,
        "model": model,
    }
    return regenerating(payload, regenerates)


def token(stream_id: str, session_id: str, seq: int, text: str, count: int) -> Payload:
    """One coalesced flush: only the text since the previous event, never the whole reply."""
    return {
        "stream_id": stream_id,
        "session_id": session_id,
        "seq": seq,
        "token": text,
        "count": count,
    }


def reasoning(stream_id: str, session_id: str, seq: int, text: str) -> Payload:
    """One coalesced flush of reasoning. `seq` counts reasoning flushes alone, so the
    text's `chat_token` seqs stay contiguous for clients that never see these."""
    return {"stream_id": stream_id, "session_id": session_id, "seq": seq, "reasoning": text}


def is_reasoning(entry: Payload) -> bool:
    """Whether a token-log entry is a `chat_reasoning` payload (else `chat_token`)."""
    return "reasoning" in entry


def complete(
    *,
    stream_id: str,
    session_id: str,
    message_id: str,
    full_response: str,
    stopped: bool,
    finish_reason: str | None,
    deltas: int,
    duration: float,
    provider: str | None,
    model: str | None,
    usage: Payload | None,
    persist_failed: bool,
    reasoning_chars: int = 0,
    reasoning_ms: int = 0,
) -> Payload:
    # Tokens as the provider counted them when it reported usage; else the
    # provider's text deltas, which are often but not always one token each.
    output_tokens = usage.get("output_tokens") if usage else None
    counted = output_tokens if isinstance(output_tokens, int) else deltas
    payload: Payload = {
        "stream_id": stream_id,
        "session_id": session_id,
        "message_id": message_id,
        "full_response": full_response,
        "stopped": stopped,
        "finish_reason": finish_reason,
        "output_tokens": output_tokens,
        "deltas": deltas,
        "tokens": deltas,  # deprecated: the delta count, kept for existing clients
        "duration": round(duration, 4),
        "tokens_per_second": round(counted / duration, 2) if duration > 0 else 0.0,
        "provider": provider,
        "model": model,
        "usage": usage,
        "persist_failed": persist_failed,
        "timestamp": now_iso(),
    }
    if reasoning_chars:  # a reply without reasoning reads as it always did
        payload["reasoning_chars"] = reasoning_chars
        payload["reasoning_ms"] = reasoning_ms
    return payload


def stream_error(
    *, stream_id: str, session_id: str, code: str, error: str, partial: str, retryable: bool
) -> Payload:
    return {
        "stream_id": stream_id,
        "session_id": session_id,
        "code": code,
        "error": error,
        "partial": partial,
        "retryable": retryable,
    }


def session_deleted(session_id: str) -> Payload:
    """To the session's room on every worker when the session is deleted; the room
    is closed right after, so its members hear nothing more of that session."""
    return {"session_id": session_id}


def usage(
    input_tokens: int | None, output_tokens: int | None, reasoning_tokens: int | None = None
) -> Payload:
    """`reasoning_tokens` (part of `output_tokens`) only when the provider counted them."""
    counted: Payload = {"input_tokens": input_tokens, "output_tokens": output_tokens}
    if reasoning_tokens is not None:
        counted["reasoning_tokens"] = reasoning_tokens
    return counted


# -- views of stored things ------------------------------------------------
def message_view(message: Message, *, reasoning: bool = False) -> Payload:
    """A stored message as clients see it: never the provider's signed reasoning
    blocks; the reasoning text only for a client that opted in."""
    view = message.to_dict()
    view.pop("signed", None)
    if not reasoning:
        view.pop("reasoning", None)
        for version in view.get("versions", ()):
            version.pop("reasoning", None)
    return view


def active_stream_view(
    record: StreamRecord | None, seq: int | None = None, reasoning_seq: int | None = None
) -> Payload | None:
    """`seq`: the last `chat_token` seq sent before the follower's live delivery
    began (else the last logged); `reasoning_seq` likewise for `chat_reasoning`,
    to a client that opted in;
    `message_id`: the reply's, which the session's messages hold once it ended (a
    stream ending during a join is named active and stored: key replies by it)."""
    if record is None:
        return None
    view: Payload = {
        "stream_id": record.stream_id,
        "message_id": record.message_id,
        "seq": record.text_seq if seq is None else seq,
        "epoch": record.epoch,
    }
    if reasoning_seq is not None:
        view["reasoning_seq"] = reasoning_seq
    return regenerating(view, record.regenerates)


def stream_summary(record: StreamRecord) -> Payload:
    return {
        "stream_id": record.stream_id,
        "session_id": record.session_id,
        "started_at": record.started_at,
        "seq": record.text_seq,
        "reasoning_seq": record.reasoning_seq,
        "epoch": record.epoch,
        "provider": record.provider,
        "model": record.model,
    }


def session_summary(info: SessionInfo, message_count: int) -> Payload:
    return {
        "session_id": info.session_id,
        "created_at": info.created_at,
        "updated_at": info.updated_at,
        "message_count": message_count,
        "title": info.title,
    }


def session_view(
    info: SessionInfo, messages: list[Message], active: Payload | None, *, reasoning: bool = False
) -> Payload:
    return {
        "session_id": info.session_id,
        "created_at": info.created_at,
        "messages": [message_view(m, reasoning=reasoning) for m in messages],
        "active_stream": active,
    }


# -- HTTP API replies (docs/http.md) ------------------------------------------
def stream_error_body(error: Payload) -> Payload:
    """The JSON reply of `POST /api/chat/stream` for a stream that ended in an error."""
    return {
        **error_body(error["code"], error["error"], retryable=error["retryable"]),
        "stream_id": error["stream_id"],
        "session_id": error["session_id"],
        "partial": error["partial"],
        "retryable": error["retryable"],
    }


def active_streams_view(records: list[StreamRecord]) -> Payload:
    return {"streams": [stream_summary(r) for r in records], "count": len(records)}


def sessions_view(summaries: list[Payload]) -> Payload:
    return {"sessions": summaries}


def loop_status(state: str, failures: int, last_error: str | None) -> Payload:
    """One background loop in `GET /readyz`."""
    return {"state": state, "failures": failures, "last_error": last_error}


def readiness(
    reason: str | None,
    heard: dict[str, float | None] | None = None,
    *,
    loops: dict[str, Payload],
    status: str = "unavailable",
) -> Payload:
    """`GET /readyz`: `reason` says why the worker is not ready (None when it is),
    `status` what it is then (`unavailable`, or `draining` during a shutdown);
    `heard`: seconds since each pub/sub listener last heard a message (Redis only);
    `loops`: each background loop's state, failure count and last error."""
    body: Payload = (
        {"status": "ready"}
        if reason is None
        else {
            "status": status,
            "reason": reason,
        }
    )
    body["loops"] = loops
    if heard:
        body["listeners_heard_s"] = {
            name: None if age is None else round(age, 3) for name, age in heard.items()
        }
    return body
