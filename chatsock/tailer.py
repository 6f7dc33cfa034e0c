"""Following, on this worker, a stream that another worker generates.

The owner sends each flush to its own room members directly and appends it
to the stream's Redis log; a worker whose clients follow the stream tails
that log and sends the entries to its local members. No token is published
to every worker. A tailer also notices the end (the stored terminal event)
and the owner's death (its lease expired): then ending.py records the stream
as `worker_lost` with the text the log holds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from chatsock import protocol
from chatsock.ending import declare_lost
from chatsock.fanout import Fanout, Feed
from chatsock.store import Store, StoreUnavailable
from chatsock.store.models import StreamRecord
from chatsock.timing import TAIL_IDLE_FOLLOWERLESS_S, TAIL_POLL_MS

log = logging.getLogger(__name__)


class Tailers:
    """Owns one tail task per stream followed here but running elsewhere."""

    def __init__(self, store: Store, fanout: Fanout, *, is_local: Any) -> None:
        self.store = store
        self.fanout = fanout
        self._is_local = is_local
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def ensure(
        self, record: StreamRecord, start_at: int, start: dict[str, Any] | None = None
    ) -> Feed | None:
        """The live feed of `record` on this worker, starting a tailer if needed."""
        feed = self.fanout.feeds.get(record.stream_id)
        if feed is not None or self._is_local(record.stream_id):
            return feed
        feed = self.fanout.open(record.stream_id, record.session_id, start_at)
        task = asyncio.get_running_loop().create_task(
            self._tail(feed, record, start), name=f"tail {record.stream_id}"
        )
        self.tasks[record.stream_id] = task
        task.add_done_callback(lambda _: self.tasks.pop(record.stream_id, None))
        return feed

    async def close(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    def _followed(self, feed: Feed) -> bool:
        return bool(feed.listeners or feed.catching_up or self.fanout.room_size(feed.session_id))

    async def _tail(self, feed: Feed, record: StreamRecord, start: dict[str, Any] | None) -> None:
        loop = asyncio.get_running_loop()
        unfollowed_since: float | None = None
        try:
            if start is not None:
                await self.fanout.emit(feed, protocol.STREAM_START, start)
            while True:
                try:
                    entries = await self.store.wait_tokens(
                        record.stream_id, feed.last_seq, TAIL_POLL_MS
                    )
                    for entry in entries:
                        if entry.seq > feed.last_seq:
                            await self.fanout.emit(feed, protocol.TOKEN, entry.payload, entry.seq)
                    if entries:
                        continue
                    terminal = await self.store.get_terminal(record.stream_id)
                    if terminal is None and not await self.store.lease_alive(record.stream_id):
                        terminal = await declare_lost(self.store, record)
                    if terminal is not None:
                        for entry in await self.store.read_tokens(record.stream_id, feed.last_seq):
                            await self.fanout.emit(feed, protocol.TOKEN, entry.payload, entry.seq)
                        await self.fanout.end(feed, terminal)
                        return
                except StoreUnavailable as exc:
                    log.warning("tailing %s: %s; retrying", record.stream_id, exc)
                    await asyncio.sleep(0.5)
                    continue
                if self._followed(feed):
                    unfollowed_since = None
                elif unfollowed_since is None:
                    unfollowed_since = loop.time()
                elif loop.time() - unfollowed_since > TAIL_IDLE_FOLLOWERLESS_S:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("tailing %s failed", record.stream_id)
        finally:
            if self.fanout.feeds.get(record.stream_id) is feed:
                self.fanout.feeds.pop(record.stream_id, None)
