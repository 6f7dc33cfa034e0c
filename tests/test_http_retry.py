"""A retried `POST /api/chat/stream` (same client_message_id) replays, never joins midway.

The client sequence is @microsoft/fetch-event-source's: POST, read some events,
the connection drops, POST again with the same body and `Last-Event-ID`. The
retry gets every seq after that id, then the live ones: the two responses hold
every seq exactly once and their tokens add up to `full_response`. Without
`Last-Event-ID` the retry replays from seq 1.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import url_of
from tests.fakes.provider import ScriptedProvider
from tests.support.http import SSE, Event, SSEReader, tokens

PIECES = 40


def _script(provider: ScriptedProvider) -> asyncio.Event:
    """A reply of PIECES pieces that waits at a gate after the first half."""
    script = provider.enqueue()
    for i in range(PIECES // 2):
        script.text(f"a{i} ").sleep(0.005)
    gate = script.gate()
    for i in range(PIECES // 2):
        script.text(f"b{i} ").sleep(0.005)
    return gate


async def _post(
    http: aiohttp.ClientSession, url: str, body: dict[str, str], last_id: str | None = None
) -> SSEReader:
    headers = dict(SSE)
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    response = await http.post(f"{url}/api/chat/stream", json=body, headers=headers)
    assert response.status == 200, await response.text()
    return SSEReader(response)


async def _some_tokens(reader: SSEReader, count: int) -> list[Event]:
    got = []
    while len(got) < count:
        event = await reader.event()
        if event.event == "chat_token":
            got.append(event)
    return got


def _check_whole(first: list[Event], retry: list[Event], after: int) -> None:
    """The first response's tokens up to `after`, then the retry's, are every seq
    once, and add up to the full response."""
    done = retry[-1]
    assert done.event == "chat_complete", done
    kept = [t for t in tokens(first) if t["seq"] <= after]
    later = tokens(retry)
    seqs = [t["seq"] for t in [*kept, *later]]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    assert [t["seq"] for t in later][:1] == [after + 1]
    assert "".join(t["token"] for t in [*kept, *later]) == done.data["full_response"]
    assert [e.id for e in retry if e.event == "chat_token"] == [str(t["seq"]) for t in later]


@pytest.mark.parametrize("with_last_event_id", [True, False])
async def test_a_retried_post_replays_from_last_event_id_or_from_seq_1(
    start_server, http, with_last_event_id
):
    provider = ScriptedProvider("fake")
    gate = _script(provider)
    url = url_of(await start_server(chain=["fake"], providers={"fake": provider}))
    body = {"message": "hi", "session_id": "ses_retry", "client_message_id": "cm-1"}

    first = await _post(http, url, body)
    got = await _some_tokens(first, 3)
    first.response.close()  # the connection drops; the stream runs on
    after = int(got[-1].id or 0)
    await asyncio.sleep(0.2)  # more tokens go out meanwhile, to nobody

    retry = await _post(http, url, body, str(after) if with_last_event_id else None)
    assert retry.response.headers["X-Stream-Id"] == got[0].data["stream_id"]
    await _some_tokens(retry, 1)
    gate.set()
    events = await retry.until_end()
    _check_whole(first.seen, retry.seen, after if with_last_event_id else 0)
    assert len(provider.requests) == 1  # one stream, never a second start
    assert not any(e.event == "chat_stream_start" for e in events)


async def test_a_retried_post_after_the_end_replays_the_whole_reply_and_its_end(
    server, fake_provider, http
):
    fake_provider.enqueue("one ", "two ", "three")
    url = url_of(server)
    body = {"message": "hi", "client_message_id": "cm-done", "session_id": "ses_done"}
    first = await _post(http, url, body)
    whole = await first.until_end()
    again = await _post(http, url, body, "1")
    rest = await again.until_end()
    assert rest[-1].data == whole[-1].data
    assert tokens(rest) == [t for t in tokens(whole) if t["seq"] > 1]


async def test_a_bad_last_event_id_on_a_post_is_refused_before_anything_starts(
    server, fake_provider, http
):
    body = {"message": "hi", "client_message_id": "cm-bad", "session_id": "ses_bad"}
    response = await http.post(
        f"{url_of(server)}/api/chat/stream",
        json=body,
        headers={**SSE, "Last-Event-ID": "-1"},
    )
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "invalid_request"
    assert error["message"].startswith("Last-Event-ID: ")
    assert fake_provider.requests == []


async def test_many_concurrent_retries_each_get_every_seq_exactly_once(start_server, http):
    """Eight streams, each dropped by its client after a few tokens and retried by
    three POSTs at once (half of the streams with Last-Event-ID, half without):
    every retry holds every seq exactly once."""
    streams = 8
    provider = ScriptedProvider("fake")
    gates = [_script(provider) for _ in range(streams)]
    url = url_of(await start_server(chain=["fake"], providers={"fake": provider}))

    async def one(index: int) -> None:
        body = {"message": "go", "session_id": f"ses_many{index}", "client_message_id": "c"}
        first = await _post(http, url, body)
        got = await _some_tokens(first, 2 + index % 3)
        first.response.close()
        after = int(got[-1].id or 0) if index % 2 else 0
        retries = await asyncio.gather(
            *(_post(http, url, body, str(after) if after else None) for _ in range(3))
        )
        await asyncio.gather(*(_some_tokens(r, 1) for r in retries))
        gates[index].set()
        for retry in retries:
            await retry.until_end()
            _check_whole(first.seen, retry.seen, after)
        ends = {r.seen[-1].data["full_response"] for r in retries}
        assert len(ends) == 1

    await asyncio.gather(*(one(i) for i in range(streams)))
    assert len(provider.requests) == streams


@pytest.mark.redis
async def test_a_retry_answered_by_the_other_worker_replays_from_last_event_id(
    start_server, redis_url, http
):
    """A load balancer sends the retry elsewhere: worker B finds A's stream by its
    client_message_id and replays it from the log, then follows it live."""
    provider = ScriptedProvider("fake")
    gate = _script(provider)
    workers = [
        url_of(
            await start_server(
                chain=["fake"],
                providers={"fake": provider if name == "a" else ScriptedProvider("fake")},
                store={"redis_url": redis_url},
                server={"worker_id": f"worker-{name}"},
            )
        )
        for name in ("a", "b")
    ]
    body = {"message": "hi", "session_id": "ses_moved", "client_message_id": "cm-moved"}
    first = await _post(http, workers[0], body)
    got = await _some_tokens(first, 3)
    first.response.close()
    after = int(got[-1].id or 0)
    retry = await _post(http, workers[1], body, str(after))
    await _some_tokens(retry, 1)
    gate.set()
    await retry.until_end()
    _check_whole(first.seen, retry.seen, after)
    assert len(provider.requests) == 1
