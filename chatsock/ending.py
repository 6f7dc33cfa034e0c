"""End arbitration: who records a stream's end, and what happens when its owner died.

A stream's end is claimed once (`Store.claim_end`, SET NX). Its claimant, the
owner finishing normally or a worker that found the owner's lease lapsed,
alone persists the reply and records the terminal event; everyone else
relays the end the claimant recorded. So a reply is stored exactly once
even when an owner cut off from Redis and another worker both try to end it.
"""

from __future__ import annotations

import asyncio
import enum
import logging

from chatsock import protocol
from chatsock.ids import new_id
from chatsock.outcome import error_terminal
from chatsock.retry import retrying
from chatsock.store import Store, StoreUnavailable
from chatsock.store.models import Message, StreamRecord, Terminal
from chatsock.timing import END_POLL_S, END_WAIT_S

log = logging.getLogger(__name__)


class Claim(enum.Enum):
    """The answer to "may I persist and record this stream's end?"."""

    OWN = "own"  # yes: persist the reply and record the end
    TAKEN = "taken"  # no: another worker took the stream for lost; relay its end
    UNREACHABLE = "unreachable"  # the store did not answer: record, but persist nothing


async def claim_end(store: Store, stream_id: str, claimant: str) -> Claim:
    """Claim a stream's end for `claimant` (unique, so a retried claim still wins)."""
    try:
        won = await retrying(lambda: store.claim_end(stream_id, claimant))
    except StoreUnavailable:
        return Claim.UNREACHABLE
    return Claim.OWN if won else Claim.TAKEN


async def owner_lost(store: Store, record: StreamRecord, *, local: bool) -> bool:
    """Whether `record` streams on another worker whose lease expired; if so it is
    recorded as `worker_lost` (see `declare_lost`)."""
    if local or record.status != "streaming" or await store.lease_alive(record.stream_id):
        return False
    await declare_lost(store, record)
    return True


async def declare_lost(store: Store, record: StreamRecord) -> Terminal:
    """Record a stream whose owner died: error `worker_lost` with the logged text.

    Several workers may notice at once, and an owner that was only cut off
    from Redis may be finishing it too: the one that claims the end persists
    the message and records it; the others return the end it recorded. The
    partial is read after the claim, so it holds every flush logged before it.
    """
    claimant = new_id("lost")  # unique, so a retried claim is recognised as ours
    claim = await claim_end(store, record.stream_id, claimant)
    if claim is Claim.UNREACHABLE:
        raise StoreUnavailable(f"stream {record.stream_id}: the store did not answer the claim")
    partial, reasoning = await logged_reply(store, record.stream_id)
    terminal = error_terminal(
        record,
        "worker_lost",
        f"the worker running this stream ({record.owner}) stopped responding",
        partial,
        retryable=True,
    )
    if claim is Claim.TAKEN:
        recorded = await ended_elsewhere(store, record.stream_id)
        if recorded is not None:
            return recorded
        # The claimant never recorded the end: record it (NX) to free the slot.
        await retrying(lambda: store.finish_stream(record, terminal))
        return await store.get_terminal(record.stream_id) or terminal
    log.warning("stream %s: owner %s lost; recording worker_lost", record.stream_id, record.owner)
    # If the owner was only cut off from Redis, it stops at its next flag check
    # and relays the end recorded here.
    await retrying(lambda: store.request_stop(record.stream_id))
    message = Message(
        record.message_id,
        "assistant",
        partial,
        protocol.now_iso(),
        status="error",
        stream_id=record.stream_id,
        provider=record.provider,
        model=record.model,
        error_code="worker_lost",
        reasoning=reasoning or None,
    )
    try:
        await retrying(lambda: store.add_message(record.session_id, message))
    except StoreUnavailable:
        log.exception("stream %s: could not store its partial reply", record.stream_id)
    await retrying(lambda: store.finish_stream(record, terminal))
    return terminal


async def logged_reply(store: Store, stream_id: str) -> tuple[str, str]:
    """The text and the reasoning of every flush in a stream's token log."""
    entries = await store.read_tokens(stream_id, 0)
    text = "".join(str(entry.payload.get("token", "")) for entry in entries)
    reasoning = "".join(str(entry.payload.get("reasoning", "")) for entry in entries)
    return text, reasoning


async def ended_elsewhere(
    store: Store, stream_id: str, within: float = END_WAIT_S, *, until_owner_gone: bool = False
) -> Terminal | None:
    """The end recorded by whoever claimed it, once it is stored. None after
    `within`, or, with `until_owner_gone`, as soon as the owner's lease has
    lapsed: its worker is gone and will record nothing more."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            terminal = await store.get_terminal(stream_id)
            if terminal is None and until_owner_gone and not await store.lease_alive(stream_id):
                return None
        except StoreUnavailable:
            terminal = None
        if terminal is not None or loop.time() >= deadline:
            return terminal
        await asyncio.sleep(END_POLL_S)
