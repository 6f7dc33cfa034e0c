"""A reply stored while its session is deleted never brings the session back.

`Store.add_message` reads the session header, then pushes the message. A delete
landing between the two used to recreate the message list and the header with
a lone reply (a deleted session come back). The store pauses right after the
header read (a fake backend, not a mock), so the delete lands there for sure.
"""

from __future__ import annotations

import asyncio
from typing import Any

from chatsock.store.models import Message
from tests.support.fixtures import private_redis_server, redis_server, redis_url  # noqa: F401
from tests.support.redis_topology import redis_topologies  # noqa: F401
from tests.test_store_contract import (
    StoreFactory,
    at,
    make_store,
    message,
    session,
    stored_keys,
)

__all__ = ["make_store"]  # a fixture, re-used from the contract suite


class PausedAfterHeaderRead:
    """A store mixin: the first read of an armed session's header returns only
    once the test releases it."""

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self.armed: dict[str, tuple[asyncio.Event, asyncio.Event]] = {}

    def arm(self, key: str) -> tuple[asyncio.Event, asyncio.Event]:
        """(reached, release) of the next read of `key`."""
        pause = self.armed[key] = (asyncio.Event(), asyncio.Event())
        return pause

    async def _get(self, key: str) -> bytes | None:
        value: bytes | None = await super()._get(key)  # type: ignore[misc]
        pause = self.armed.pop(key, None)
        if pause is not None:
            pause[0].set()
            await pause[1].wait()
        return value


def reply(n: int, stream_id: str = "st-1", t: float = 2) -> Message:
    return Message(
        f"reply-{n}", "assistant", f"answer {n}", at(t), stream_id=stream_id, provider="fake"
    )


async def paused_store(make_store: StoreFactory) -> Any:
    return await make_store(mixin=PausedAfterHeaderRead)


async def test_a_reply_stored_while_its_session_is_deleted_brings_nothing_back(
    make_store: StoreFactory,
) -> None:
    store = await paused_store(make_store)
    await store.ensure_session(session("s1"))
    await store.add_message("s1", message(1, "question", t=1))
    reached, release = store.arm(store._sk("s1"))
    adding = asyncio.create_task(store.add_message("s1", reply(1)))
    await reached.wait()  # it read the header; the push is next
    assert await store.delete_session("s1") is True
    release.set()
    assert await adding is False
    assert await store.get_session("s1") is None
    assert await store.get_messages("s1") == []
    assert [s.session_id for s in await store.list_sessions()] == []
    assert [k for k in await stored_keys(store) if ":s1" in k] == []


async def test_a_version_stored_while_its_session_is_deleted_brings_nothing_back(
    make_store: StoreFactory,
) -> None:
    """The regenerate path: a second stream's reply under a stored message id."""
    store = await paused_store(make_store)
    await store.ensure_session(session("s1"))
    await store.add_message("s1", message(1, "question", t=1))
    assert await store.add_message("s1", reply(1)) is True
    reached, release = store.arm(store._sk("s1"))
    adding = asyncio.create_task(store.add_message("s1", reply(1, "st-2", t=3)))
    await reached.wait()
    await store.delete_session("s1")
    release.set()
    assert await adding is False
    assert await store.get_session("s1") is None
    assert [k for k in await stored_keys(store) if ":s1" in k] == []


async def test_a_reply_for_a_session_deleted_and_made_again_is_dropped(
    make_store: StoreFactory,
) -> None:
    """Another user may claim a deleted session's id: a late reply of the old one
    must neither land in the new session nor write the old owner back."""
    store = await paused_store(make_store)
    await store.ensure_session(session("s1"))
    reached, release = store.arm(store._sk("s1"))
    adding = asyncio.create_task(store.add_message("s1", reply(1)))
    await reached.wait()
    await store.delete_session("s1")
    again = session("s1", t=50)
    again.owner = "mallory"
    await store.ensure_session(again)
    release.set()
    assert await adding is False
    assert await store.get_session("s1") == again
    assert await store.get_messages("s1") == []


async def test_many_sessions_deleted_while_their_replies_are_stored(
    make_store: StoreFactory,
) -> None:
    """Forty sessions: each reply is added twice (a retry) while its session is
    deleted, half of them paused right after the header read. No deleted
    session comes back; in the ten kept, each reply is stored exactly once."""
    store = await paused_store(make_store)
    deleted = [f"d{n}" for n in range(40)]
    kept = [f"k{n}" for n in range(10)]
    for n, session_id in enumerate([*deleted, *kept]):
        await store.ensure_session(session(session_id, t=n))
        await store.add_message(session_id, message(n, "question", t=n))
    pauses = [store.arm(store._sk(s)) for s in deleted[:20]]
    adds = [
        asyncio.create_task(store.add_message(s, reply(n)))
        for _ in range(2)
        for n, s in enumerate([*deleted, *kept])
    ]
    await asyncio.gather(*(reached.wait() for reached, _ in pauses))
    deletes = [asyncio.create_task(store.delete_session(s)) for s in deleted]
    await asyncio.gather(*deletes)
    for _, release in pauses:
        release.set()
    stored = await asyncio.gather(*adds)
    assert all(d for d in [t.result() for t in deletes])
    for session_id in deleted:
        assert await store.get_session(session_id) is None
        assert await store.get_messages(session_id) == []
    assert {s.session_id for s in await store.list_sessions()} == set(kept)
    names = await stored_keys(store)
    assert [k for k in names if any(f":{s}:" in k or k.endswith(f":{s}") for s in deleted)] == []
    for n, session_id in enumerate(kept, start=len(deleted)):
        ids = [m.message_id for m in await store.get_messages(session_id)]
        assert ids == [f"msg-{n}", f"reply-{n}"]
    every = len(deleted) + len(kept)
    twice = [stored[i] + stored[every + i] for i in range(every)]  # each reply's two adds
    assert all(n <= 1 for n in twice[: len(deleted)])  # stored at most once, then deleted
    assert twice[len(deleted) :] == [1] * len(kept)
