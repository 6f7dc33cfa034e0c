"""The store contract for message versions (regenerate), on every backend.

A reply stored under a message id that holds another stream's reply takes that
message's place, and the reply it replaces moves into the message's `versions`,
oldest first: atomically, so concurrent versions never lose one another and a
version racing a session delete writes nothing.
"""

from __future__ import annotations

import asyncio

import pytest

from chatsock.store.base import MAX_VERSIONS, Store
from chatsock.store.models import Message
from tests.support.fixtures import private_redis_server, redis_server, redis_url  # noqa: F401
from tests.support.redis_topology import redis_topologies  # noqa: F401
from tests.test_store_contract import at, make_store, message, session, store, stored_keys

__all__ = ["make_store", "store"]  # fixtures, re-used from the contract suite


def reply(stream_id: str, content: str, t: float, status: str = "complete") -> Message:
    """A reply to the turn `msg-2` streamed by `stream_id`."""
    return Message(
        "msg-2", "assistant", content, at(t), status=status,  # type: ignore[arg-type]
        stream_id=stream_id, provider="fake", model="m",
        error_code="provider_error" if status == "error" else None,
    )  # fmt: skip


async def a_turn(store: Store) -> None:
    """s1: a user message (msg-1), its reply (msg-2, by st-1), a later user message."""
    await store.ensure_session(session("s1"))
    await store.add_message("s1", message(1, "question", t=1))
    await store.add_message("s1", reply("st-1", "first answer", 2))


async def test_a_reply_by_another_stream_replaces_the_message_and_keeps_the_old_as_a_version(
    store: Store,
) -> None:
    await a_turn(store)
    await store.add_message("s1", message(3, "next question", t=3))
    assert await store.add_message("s1", reply("st-2", "second", 4, status="stopped")) is True
    messages = await store.get_messages("s1")
    assert [m.message_id for m in messages] == ["msg-1", "msg-2", "msg-3"]  # kept its place
    regenerated = messages[1]
    assert (regenerated.content, regenerated.status, regenerated.stream_id) == (
        "second",
        "stopped",
        "st-2",
    )
    assert regenerated.versions == [
        {
            "content": "first answer",
            "created_at": at(2),
            "status": "complete",
            "stream_id": "st-1",
            "provider": "fake",
            "model": "m",
            "error_code": None,
        }
    ]
    assert await store.count_messages("s1") == 3


async def test_a_version_retried_stores_nothing_more(store: Store) -> None:
    """Persisting is retried after a lost reply: the same stream's reply is stored
    once, also once a later version has replaced it."""
    await a_turn(store)
    assert await store.add_message("s1", reply("st-2", "second", 3)) is True
    assert await store.add_message("s1", reply("st-2", "second", 3)) is False
    assert await store.add_message("s1", reply("st-3", "third", 4)) is True
    assert await store.add_message("s1", reply("st-2", "second", 3)) is False
    assert await store.add_message("s1", reply("st-1", "first answer", 2)) is False
    (_, stored) = await store.get_messages("s1")
    assert stored.content == "third"
    assert [v["stream_id"] for v in stored.versions or []] == ["st-1", "st-2"]


async def test_versions_are_oldest_first_and_the_newest_max_versions_are_kept(
    store: Store,
) -> None:
    await a_turn(store)
    for n in range(2, MAX_VERSIONS + 4):
        assert await store.add_message("s1", reply(f"st-{n}", f"answer {n}", n + 1)) is True
    (_, stored) = await store.get_messages("s1")
    assert stored.content == f"answer {MAX_VERSIONS + 3}"
    kept = [v["content"] for v in stored.versions or []]
    assert kept == [f"answer {n}" for n in range(3, MAX_VERSIONS + 3)]
    assert len(kept) == MAX_VERSIONS


async def test_concurrent_versions_of_one_message_lose_none(store: Store) -> None:
    """Two regenerates ending at once: each read-modify-write is a compare-and-set,
    so every reply is the message or one of its versions, each once."""
    await a_turn(store)
    streams = [f"st-{n}" for n in range(2, 12)]
    stored = await asyncio.gather(
        *(store.add_message("s1", reply(s, f"by {s}", 3)) for s in streams)
    )
    assert stored == [True] * len(streams)
    (_, current) = await store.get_messages("s1")
    seen = [current.stream_id, *(v["stream_id"] for v in current.versions or [])]
    assert sorted(seen) == sorted(["st-1", *streams])
    assert seen[1] == "st-1"  # the original is the oldest version


async def test_a_version_for_a_deleted_session_recreates_nothing(store: Store) -> None:
    await a_turn(store)
    await store.delete_session("s1")
    assert await store.add_message("s1", reply("st-2", "late", 3)) is False
    assert await store.get_session("s1") is None
    assert not [k for k in await stored_keys(store) if ":session:s1" in k]


async def test_the_swap_is_a_compare_and_set_guarded_by_the_session(store: Store) -> None:
    """The one atomic step of a new version: it replaces the item only while it is
    unchanged, and writes nothing once the session's header is gone (a delete won)."""
    await a_turn(store)
    key, guard = store._sk("s1", "messages"), store._sk("s1")
    raw = (await store._range(key))[1]
    assert await store._swap_item(key, guard, b"not the item", b"x") == 0
    assert await store._swap_item(key, guard, raw, b'{"changed": 1}') == 1
    assert await store._swap_item(key, guard, raw, b"x") == 0  # changed meanwhile
    await store._delete(guard)
    assert await store._swap_item(key, guard, b'{"changed": 1}', b"x") == -1
    assert (await store._range(key))[1] == b'{"changed": 1}'


async def test_a_user_message_or_a_reply_without_a_stream_is_never_versioned(
    store: Store,
) -> None:
    await a_turn(store)
    twin = Message("msg-1", "user", "another question", at(3), stream_id="st-9")
    assert await store.add_message("s1", twin) is False
    unstreamed = Message("msg-2", "assistant", "no stream", at(4))
    assert await store.add_message("s1", unstreamed) is False
    messages = await store.get_messages("s1")
    assert [m.content for m in messages] == ["question", "first answer"]
    assert all(m.versions is None for m in messages)


async def test_a_message_round_trips_its_versions(store: Store) -> None:
    await store.ensure_session(session("s1"))
    sent = Message(
        "m1", "assistant", "now", at(3), stream_id="st-2",
        versions=[{"content": "before", "status": "error", "stream_id": "st-1"}],
    )  # fmt: skip
    await store.add_message("s1", sent)
    assert await store.get_messages("s1") == [sent]


@pytest.mark.parametrize("cap", [3])
async def test_a_versioned_message_is_trimmed_with_its_versions(
    make_store: object, cap: int
) -> None:
    store: Store = await make_store(max_messages=cap)  # type: ignore[operator]
    await a_turn(store)
    await store.add_message("s1", reply("st-2", "second", 3))
    for n in range(3, 3 + cap):
        await store.add_message("s1", message(n, t=n + 1))
    assert "msg-2" not in [m.message_id for m in await store.get_messages("s1")]
    assert await store.add_message("s1", reply("st-3", "late", 9)) is True  # a new message
