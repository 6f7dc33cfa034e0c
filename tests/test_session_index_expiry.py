"""The session indexes forget expired sessions and go once all have (a leak the soak found).

`chatsock:sessions` and `chatsock:user:<u>:sessions` list sessions by their last
write. Sessions expire `store.session_ttl` after it; before this, their ids
stayed in both indexes forever (only a listing or a delete pruned them), so a
long-running deployment's Redis grew without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from chatsock.protocol import now_iso
from chatsock.store import Store
from chatsock.store.memory import MemoryStore
from chatsock.store.models import Message, SessionInfo
from chatsock.store.redis import RedisStore

PREFIX = "idx-expiry"


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Store, object]]:
    if request.param == "memory":
        store: Store = MemoryStore(prefix=PREFIX, session_ttl=1)
        await store.open()
        yield store, None
        await store.close()
        return
    url = request.getfixturevalue("redis_url")
    raw = aioredis.Redis.from_url(url)
    await raw.flushdb()
    store = RedisStore(url, prefix=PREFIX, session_ttl=1)
    await store.open()
    yield store, raw
    await store.close()
    await raw.aclose()


async def _keys(store: Store, raw: object) -> list[str]:
    if isinstance(store, MemoryStore):
        return sorted(store.live_keys())
    assert isinstance(raw, aioredis.Redis)
    return sorted(k.decode() for k in await raw.keys(f"{PREFIX}:*"))


def _session(session_id: str, owner: str) -> SessionInfo:
    now = now_iso()
    return SessionInfo(session_id, now, now, owner=owner)


async def test_every_key_of_expired_sessions_goes_indexes_included(
    backend: tuple[Store, object],
) -> None:
    store, raw = backend
    # Many users and sessions at once, with messages (which rescore the indexes).
    await asyncio.gather(*(store.ensure_session(_session(f"s{n}", f"u{n % 4}")) for n in range(12)))
    await asyncio.gather(
        *(store.add_message(f"s{n}", Message(f"m{n}", "user", "hi", now_iso())) for n in range(12))
    )
    assert f"{PREFIX}:sessions" in await _keys(store, raw)
    await asyncio.sleep(2.2)  # session_ttl is 1 s
    assert await _keys(store, raw) == []


async def test_a_write_forgets_index_entries_older_than_the_ttl(
    backend: tuple[Store, object],
) -> None:
    store, raw = backend
    await store.ensure_session(_session("old", "u"))
    await asyncio.sleep(0.7)
    await store.ensure_session(_session("mid", "u"))  # keeps the indexes alive
    await asyncio.sleep(0.8)  # "old" expired, "mid" not yet
    await store.ensure_session(_session("new", "u"))
    ids = [s.session_id for s in await store.list_sessions(owner="u")]
    assert ids == ["new", "mid"]
    if isinstance(raw, aioredis.Redis):
        # Forgotten by the write itself, not by the listing above.
        for index in (f"{PREFIX}:sessions", f"{PREFIX}:user:u:sessions"):
            assert await raw.zrange(index, 0, -1) == [b"mid", b"new"]
            assert 0 < await raw.ttl(index) <= 1
    else:
        assert isinstance(store, MemoryStore)
        assert sorted(store._live(f"{PREFIX}:sessions")) == ["mid", "new"]
