"""The memory store's footprint: a token entry costs about its size, and memory
comes back when sessions are deleted.

orjson builds each result in a buffer of about 4 KB and returns it as is; the
store keeps a copy of the exact size (store/base.py `_dumps`). Measured with
tracemalloc (what Python allocated), not RSS, so the test is exact and fast.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

from chatsock.store.memory import MemoryStore
from chatsock.store.models import SessionInfo, StreamRecord, TokenAppend

ENTRIES = 2000


def _payload(seq: int) -> dict[str, object]:
    return {"stream_id": "st_abcdefghijkl", "seq": seq, "token": "word ", "count": seq}


async def test_a_logged_token_entry_costs_about_its_size_not_orjsons_buffer() -> None:
    store = MemoryStore(log_ttl=60, max_log_entries=ENTRIES)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for seq in range(1, ENTRIES + 1):
            await store.append_many([TokenAppend("st1", seq, _payload(seq))])
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / ENTRIES
    finally:
        tracemalloc.stop()
    assert per_entry < 600, f"{per_entry:.0f} bytes per ~100-byte entry"


async def test_deleting_sessions_leaves_no_key_of_their_streams() -> None:
    store = MemoryStore(log_ttl=60, max_log_entries=1000)
    for n in range(50):
        session = SessionInfo(f"s{n}", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", owner="u")
        await store.ensure_session(session)
        record = StreamRecord(
            stream_id=f"st{n}",
            session_id=f"s{n}",
            message_id=f"m{n}",
            owner="w",
            provider="demo",
            model="demo",
            started_at="2026-01-01T00:00:00Z",
            user="u",
        )
        assert (await store.register_stream(record, limit=1, lease_s=10, ack={"ok": True})).accepted
        await store.append_many([TokenAppend(f"st{n}", s, _payload(s)) for s in range(1, 21)])
    for n in range(50):
        assert await store.delete_session(f"s{n}")
    left = [key for key in store.live_keys() if ":s" in key or ":st" in key]
    assert left == []


async def test_expired_logs_are_dropped_without_further_writes() -> None:
    """An idle worker gives back the memory of logs past stream.log_ttl: the
    runner's upkeep calls forget_expired (a store that is never written again
    would otherwise keep them until they are read)."""
    store = MemoryStore(log_ttl=1, max_log_entries=100)
    await store.append_many([TokenAppend(f"st{n}", 1, _payload(1)) for n in range(30)])
    assert store.forget_expired() == 0
    await asyncio.sleep(1.1)  # past log_ttl
    assert store.forget_expired() == 30
    assert store.live_keys() == []
