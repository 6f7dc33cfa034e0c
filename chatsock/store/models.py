"""What the store keeps: sessions, messages, stream records and token-log entries."""

from __future__ import annotations

import enum
import secrets
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

MessageStatus = Literal["complete", "stopped", "error"]
StreamStatus = Literal["streaming", "complete", "stopped", "error"]


_OMITTED_WHEN_NONE = ("reasoning", "signed", "versions")
# What a message's earlier version keeps: how that reply read and ended, not the
# turn's identity (the message's own) nor what only the provider needs.
_NOT_IN_A_VERSION = ("message_id", "role", "client_message_id", "signed", "versions")


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """`data` without the fields `cls` does not have: a field a newer worker wrote
    (a rolling deploy) is left to it, not a crash."""
    names = {f.name for f in fields(cls)}
    return data if names.issuperset(data) else {k: v for k, v in data.items() if k in names}


@dataclass(slots=True)
class Message:
    """One stored chat message. Assistant messages carry how their stream ended."""

    message_id: str
    role: Literal["user", "assistant"]
    content: str
    created_at: str
    status: MessageStatus = "complete"
    stream_id: str | None = None
    client_message_id: str | None = None
    provider: str | None = None
    model: str | None = None
    error_code: str | None = None
    # The model's reasoning, apart from the text (None: it showed none), and the
    # provider's signed reasoning blocks sent back with this turn (never shown).
    reasoning: str | None = None
    signed: list[dict[str, Any]] | None = None
    # Earlier replies of this turn, oldest first, each as `as_version` gives it:
    # a regenerated reply takes its message's place and the one it replaced moves
    # here (None: never regenerated).
    versions: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for optional in _OMITTED_WHEN_NONE:  # a message without them reads as before
            if data[optional] is None:
                del data[optional]
        return data

    def as_version(self) -> dict[str, Any]:
        """This reply as an earlier version of its message (`versions`)."""
        data = self.to_dict()
        for name in _NOT_IN_A_VERSION:
            data.pop(name, None)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Message:
        return cls(**_known(cls, data))


@dataclass(slots=True)
class SessionInfo:
    """A session's header (its messages are read separately)."""

    session_id: str
    created_at: str
    updated_at: str
    owner: str | None = None
    title: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SessionInfo:
        return cls(**data)


def new_epoch() -> str:
    """A random stream epoch. A log that lost entries (a Redis failover to a replica
    that lagged, a flush) is never served as this epoch's (Centrifugo's stream epoch,
    Durable Streams' producer epoch)."""
    return secrets.token_urlsafe(6)


@dataclass(slots=True)
class StreamRecord:
    """The registry entry of one stream. `status` and the seqs are filled on read:
    `last_seq`, its token log's position (entries of both kinds); `text_seq` and
    `reasoning_seq`, the last `chat_token` and `chat_reasoning` seqs logged."""

    stream_id: str
    session_id: str
    message_id: str
    owner: str
    provider: str | None
    model: str | None
    started_at: str
    client_message_id: str | None = None
    user: str | None = None  # who started it (the session's owner); None: before owners
    status: StreamStatus = "streaming"
    last_seq: int = 0
    text_seq: int = 0
    reasoning_seq: int = 0
    # Names this incarnation of the stream's token log (see `new_epoch`); "" for
    # records written before epochs, whose logs are not checked.
    epoch: str = field(default_factory=new_epoch)
    # A regenerate (chat_regenerate): the assistant message whose reply this stream
    # replaces, its own `message_id`; None for a reply to a new user message.
    regenerates: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamRecord:
        return cls(**{"epoch": "", **_known(cls, data)})


@dataclass(slots=True, frozen=True)
class Terminal:
    """How a stream ended: the terminal event name and its exact payload."""

    status: StreamStatus
    event: str
    payload: dict[str, Any]


@dataclass(slots=True, frozen=True)
class LogEntry:
    """One `chat_token` payload as it was sent, at its `seq`."""

    seq: int
    payload: dict[str, Any]


@dataclass(slots=True, frozen=True)
class Registration:
    """The answer to `Store.register_stream`.

    `accepted`: the stream is registered (now, or by an earlier call with the
    same record). Refused with `earlier` set: its `client_message_id` already
    started another stream, whose ack that is. Refused with `full`: the
    session ("session") or its user ("user") has no free slot."""

    accepted: bool
    earlier: dict[str, Any] | None = None
    full: Literal["session", "user"] | None = None


@dataclass(frozen=True, slots=True)
class TokenAppend:
    """One flushed `chat_token` payload for the token log (`Store.append_many`).

    With `writer` (the owner's claimant name) the append is refused once anyone
    else has claimed the stream's end, as `append_token`'s is."""

    stream_id: str
    seq: int
    payload: dict[str, Any]
    writer: str = ""
    # With an epoch the append is checked (`Appended.LOST`); "" appends unchecked.
    epoch: str = ""


class Appended(enum.IntEnum):
    """The answer to one token-log append. TAKEN is falsy, as the bool it replaces."""

    TAKEN = 0  # refused: another worker claimed the stream's end
    OK = 1  # logged (or already logged at that seq: a retry)
    LOST = 2  # refused: the log is not this epoch's, or lacks the seqs before it
