"""Validation of what clients send, shared by the Socket.IO and HTTP transports."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from chatsock.config import LimitsConfig
from chatsock.errors import ChatsockError

# The largest seq a client may name: every store (Redis entry ids `0-<seq>`) and
# the JSON codec (orjson) handle it; a larger `after` is bad input, never a
# question for the store.
MAX_SEQ: Final = 2**63 - 1

SessionId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
StreamId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,128}$")]


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class HistoryItem(_Request):
    role: Literal["user", "assistant"]
    content: str


class ChatStreamRequest(_Request):
    """`chat_stream` / `POST /api/chat/stream`."""

    message: Annotated[str, StringConstraints(min_length=1)]
    session_id: SessionId | None = None
    system_prompt: str | None = None
    history: list[HistoryItem] | None = None
    provider: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    model: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    client_message_id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    # Reasoning: `reasoning` opts this client in to the model's reasoning
    # (`chat_reasoning` events); `thinking_budget` (Anthropic, tokens) and
    # `reasoning_effort` (OpenAI) ask the model to reason, within the policy.
    reasoning: bool = False
    thinking_budget: Annotated[int, Field(ge=1024, le=1_000_000)] | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None


class StopRequest(_Request):
    stream_id: StreamId


class JoinRequest(_Request):
    session_id: SessionId
    reasoning: bool = False  # also follow the session's reasoning (`chat_reasoning`)
    # Also send the active stream's tokens after `after` (reasoning after
    # `after_reasoning`) sent before the join, ahead of that stream's end.
    after: Annotated[int, Field(ge=0, le=MAX_SEQ)] | None = None
    after_reasoning: Annotated[int, Field(ge=0, le=MAX_SEQ)] = 0


class ResumeRequest(_Request):
    stream_id: StreamId
    after: Annotated[int, Field(ge=0, le=MAX_SEQ)] = 0
    # The stream's epoch as the client got it (chat_stream's ack, session_join):
    # a resume across a loss of the stream's log is told `stream_lost`.
    epoch: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None
    # Opted in to reasoning: also replay `chat_reasoning` with seq > after_reasoning.
    reasoning: bool = False
    after_reasoning: Annotated[int, Field(ge=0, le=MAX_SEQ)] = 0


R = TypeVar("R", bound=_Request)


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "payload"


def parse(model: type[R], payload: Any) -> R:
    """Validate `payload` or raise `invalid_request` naming the first bad field."""
    if not isinstance(payload, dict):
        raise ChatsockError(
            "invalid_request",
            f"payload: expected a JSON object, got {type(payload).__name__}",
        )
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ChatsockError("invalid_request", f"{_field(first['loc'])}: {first['msg']}") from None


def check_limits(request: ChatStreamRequest, limits: LimitsConfig) -> None:
    """The configurable bounds pydantic cannot know at import time (part of
    `ClientPolicy.check`, the one check both transports run)."""
    if len(request.message) > limits.max_message_chars:
        raise ChatsockError(
            "invalid_request",
            f"message: at most {limits.max_message_chars} characters allowed "
            f"(got {len(request.message)})",
        )
    if request.system_prompt is not None and (
        len(request.system_prompt) > limits.max_system_prompt_chars
    ):
        raise ChatsockError(
            "invalid_request",
            f"system_prompt: at most {limits.max_system_prompt_chars} characters allowed",
        )
    if request.history is not None and len(request.history) > limits.max_history_messages:
        raise ChatsockError(
            "invalid_request",
            f"history: at most {limits.max_history_messages} messages allowed",
        )
    # A user turn in the history is bounded like the message it once was, so a
    # client cannot pass a message the server would refuse through `history`;
    # assistant turns only by the whole prompt (limits.max_prompt_chars).
    for index, item in enumerate(request.history or ()):
        if item.role == "user" and len(item.content) > limits.max_message_chars:
            raise ChatsockError(
                "invalid_request",
                f"history.{index}.content: a user turn of at most {limits.max_message_chars} "
                f"characters allowed (limits.max_message_chars), got {len(item.content)}",
            )
