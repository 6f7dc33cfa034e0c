"""Regenerate: a new reply to a session's last user message, replacing its reply.

A regenerate is a stream like any other, started by `StreamRunner.start` with a
`Regenerate`: the same ack, events, idempotency by `client_message_id`, stream
limits, stop and resume. Its provider gets the stored history up to and
including the last user message, never the reply it replaces, and no user
message is stored. While it streams, the old reply stays stored; when it ends
(complete, stopped or failed), the new reply takes the old one's place under
the same `message_id` and the old one moves into the message's `versions`
(`Store.add_message`, atomic on every backend).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Final

from pydantic import StringConstraints

from chatsock.errors import ChatsockError, no_session
from chatsock.identity import ANONYMOUS_USER, Identity
from chatsock.ids import new_id
from chatsock.logsafe import shown
from chatsock.requests import ChatStreamRequest, SessionId, _Request, parse
from chatsock.store import Store
from chatsock.store.models import Message

MessageId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,128}$")]

# What a regenerate takes from the stored session, never from the client.
_STORED_ONLY: Final = ("message", "history")


class RegenerateRequest(_Request):
    """`chat_regenerate` / `POST /api/chat/sessions/{id}/regenerate`: which reply.
    The generation fields (provider, model, ...) are `chat_stream`'s."""

    session_id: SessionId
    message_id: MessageId | None = None


@dataclass(frozen=True, slots=True)
class Regenerate:
    """What `StreamRunner.start` needs to regenerate: the id of the reply (the
    replaced message's, or a new one when the last user message has no stored
    reply) and the stored history before the last user message."""

    message_id: str
    before: list[Message]


async def prepare(
    store: Store, payload: Any, who: Identity, session_id: str | None = None
) -> tuple[ChatStreamRequest, Regenerate]:
    """Validate a regenerate request (`session_id` from the path overrides the
    payload's) and plan it: the `chat_stream` request that answers the session's
    last user message, and the `Regenerate` for the runner.

    `invalid_request` naming the field for bad input, a session without a user
    message, or a `message_id` that is not the session's last reply; `not_found`
    for a missing session or another user's; `too_many_streams` when
    `message_id` names a reply still streaming."""
    if isinstance(payload, dict):
        for name in _STORED_ONLY:
            if name in payload:
                raise ChatsockError(
                    "invalid_request",
                    f"{name}: not accepted by a regenerate, which answers the session's "
                    "last user message with its stored history",
                )
        if session_id is not None:
            payload = {**payload, "session_id": session_id}
    asked = parse(RegenerateRequest, payload)
    # The generation fields, checked as chat_stream checks them; the message is
    # filled in from the store below.
    generation = parse(ChatStreamRequest, {**payload, "message": "-"})
    info = await store.get_session(asked.session_id)
    if info is None or (info.owner or ANONYMOUS_USER) != who.user:
        raise no_session(asked.session_id)
    messages = await store.get_messages(asked.session_id)
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    replies = [m for m in messages[users[-1] + 1 :] if m.role == "assistant"] if users else []
    target = replies[-1] if replies else None
    cmid = generation.client_message_id
    # A retried regenerate answers its first ack, whatever changed since (runner.start).
    repeated = cmid is not None and await store.find_client_message(asked.session_id, cmid)
    if not repeated:
        await _check(store, asked, target, has_user=bool(users))
    message_id = target.message_id if target is not None else asked.message_id or new_id("msg")
    last = messages[users[-1]] if users else Message("", "user", "-", "")
    request = generation.model_copy(
        update={"message": last.content, "session_id": asked.session_id}
    )
    return request, Regenerate(message_id, messages[: users[-1]] if users else [])


async def _check(
    store: Store, asked: RegenerateRequest, target: Message | None, *, has_user: bool
) -> None:
    if not has_user:
        raise ChatsockError(
            "invalid_request",
            f"session_id: session {asked.session_id!r} has no user message to answer",
        )
    wanted = asked.message_id
    if wanted is None or (target is not None and wanted == target.message_id):
        return
    running = await store.active_streams(asked.session_id)
    if any(record.message_id == wanted for record in running):
        raise ChatsockError(
            "too_many_streams",
            f"message_id: the reply {wanted!r} is still streaming; stop it or wait for it "
            "to finish",
        )
    last = f" (it is {target.message_id!r})" if target is not None else " (it has none yet)"
    raise ChatsockError(
        "invalid_request",
        f"message_id: {shown(wanted, 64)} is not the session's last assistant message{last}",
    )
