"""Deleting a session mid-reply: every follower, on every worker, gets the stopped
reply's end before `session_deleted`.

A second tab on worker B that joined mid-reply follows the stream through B's
tailer. The delete stops the stream, waits for its recorded end, deletes the
session and closes the room on every worker. B's tailer polls (TAIL_POLL_MS):
the close used to take the tab out of the room before the tailer relayed the
end, so the tab got `session_deleted` and never the reply's `chat_complete`
(on the owner's worker the runner sends the end before the delete goes on).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from chatsock.app import SESSIONS, create_app
from tests.conftest import url_of
from tests.fakes.provider import ScriptedProvider
from tests.support.clients import RecordingClient
from tests.support.invariants import (
    assert_none,
    check_follower,
    merge_tokens,
    occupied_slots,
    seen,
)
from tests.support.waiting import poll_until

pytestmark = pytest.mark.redis

PIECES = 5


async def _manager_hears(http: aiohttp.ClientSession, server: TestServer) -> None:
    """Wait until the worker's Socket.IO manager hears (it subscribes on its first client)."""
    async with asyncio.timeout(15):
        while True:
            async with http.get(f"{url_of(server)}/readyz") as reply:
                heard = (await reply.json(content_type=None)).get("listeners_heard_s", {})
            if heard.get("socketio") is not None:
                return
            await asyncio.sleep(0.1)


@pytest.fixture
async def workers(aiohttp_server, make_settings, redis_url):
    provider = ScriptedProvider("fake")
    made = []
    for name in ("worker-a", "worker-b"):
        settings = make_settings(
            chain=["fake"],
            store={"redis_url": redis_url},
            server={"worker_id": name},
            stream={"flush_interval_ms": 1},
        )
        providers: dict[str, Any] = {"fake": provider if name == "worker-a" else ScriptedProvider()}
        made.append(await aiohttp_server(create_app(settings, providers=providers)))
    return made[0], made[1], provider


@pytest.mark.parametrize("deleter", ["owner's worker", "follower's worker"])
async def test_a_follower_on_another_worker_gets_the_stopped_end_before_session_deleted(
    workers, http, redis_url, deleter
):
    a, b, provider = workers
    sessions = 4
    tabs: list[RecordingClient] = []
    try:
        owners, followers, acks = [], [], []
        for i in range(sessions):
            script = provider.enqueue()
            for n in range(PIECES):
                script.text(f"s{i}-{n} ").sleep(0.01)
            for n in range(400):  # still running when the delete stops it
                script.text(f"t{n} ").sleep(0.005)
            owner = await RecordingClient().connect(url_of(a))
            follower = await RecordingClient().connect(url_of(b))
            tabs += [owner, follower]
            ack = await owner.call("chat_stream", {"message": "go", "session_id": f"del{i}"})
            assert ack["ok"] is True, ack
            stream_id = ack["stream_id"]
            await owner.wait_for(lambda _, o=owner, s=stream_id: len(o.tokens(s)) >= 2)
            joined = await follower.call("session_join", {"session_id": f"del{i}"})
            active = joined["active_stream"]
            assert active["stream_id"] == stream_id
            # The documented second-tab flow: join, then resume after the seq it reports.
            resumed = await follower.call(
                "chat_resume",
                {"stream_id": stream_id, "after": active["seq"], "epoch": active["epoch"]},
            )
            assert resumed == {"ok": True, "status": "streaming"}
            owners.append(owner)
            followers.append((follower, joined["active_stream"]["seq"] + 1))
            acks.append(ack)
        await asyncio.gather(_manager_hears(http, a), _manager_hears(http, b))
        # The followers on B get the rest of each reply live, through B's tailer.
        for follower, _ in followers:
            await follower.wait_for(lambda _, f=follower: len(f.of("chat_token")) >= 2)

        target = a if deleter == "owner's worker" else b

        async def delete(session_id: str) -> None:
            async with http.delete(f"{url_of(target)}/api/chat/sessions/{session_id}") as reply:
                assert reply.status == 200, await reply.text()

        await asyncio.gather(*(delete(ack["session_id"]) for ack in acks))

        problems: list[str] = []
        for i, ack in enumerate(acks):
            stream_id, session_id = ack["stream_id"], ack["session_id"]
            for label, client in (
                ("owner on A", owners[i]),
                ("tab on B", followers[i][0]),
            ):
                name = f"{session_id} {label}"
                try:
                    await client.wait_event("session_deleted", within=10)
                except TimeoutError:
                    problems.append(f"{name}: no session_deleted")
                    continue
                order = [
                    e
                    for e, d in client.events
                    if e == "session_deleted"
                    or (isinstance(d, dict) and d.get("stream_id") == stream_id)
                ]
                before = order[: order.index("session_deleted")]
                if "chat_complete" not in before:
                    problems.append(f"{name}: session_deleted came first; it had {before[-3:]}")
            views = [seen(owners[i].events, stream_id), seen(followers[i][0].events, stream_id)]
            tokens, found = merge_tokens(session_id, views)
            problems += found
            problems += check_follower(
                f"{session_id} owner on A", views[0], start=1, must_end=True, tokens=tokens
            )
            problems += check_follower(
                f"{session_id} tab on B",
                views[1],
                start=followers[i][1],
                must_end=True,
                tokens=tokens,
            )
            for view, label in zip(views, ("owner on A", "tab on B"), strict=True):
                ends = [(e, p.get("stopped")) for e, p in view.terminals]
                if ends and ends != [("chat_complete", True)]:
                    problems.append(f"{session_id} {label}: ended {ends}, not stopped")
        tailers = b.app[SESSIONS].tailers
        if not await poll_until(lambda: not tailers.tasks, within=10):
            problems.append(f"B still tails {sorted(tailers.tasks)}")
        problems += await occupied_slots(redis_url, "chatsock")
        assert_none(problems)
    finally:
        for tab in tabs:
            await tab.close()
