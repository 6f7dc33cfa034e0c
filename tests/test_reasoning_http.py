"""Reasoning over the HTTP API: SSE with `<seq>.<reasoning seq>` event ids and
Last-Event-ID resumes, the JSON reply, the session view, and useChat's reasoning
parts. The demo provider reasons before it answers (its `thinking_budget`)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from tests.conftest import url_of
from tests.support.http import SSE, SSEReader, tokens
from tests.support.ui_stream import UIStreamReader


async def reasoning_demo(start_server: Any, make_settings: Any, tps: float = 60) -> TestServer:
    server: TestServer = await start_server(
        make_settings(
            demo={"tokens_per_second": tps},
            providers={"demo": {"kind": "demo", "thinking_budget": 1024}},
        )
    )
    return server


def reasonings(events: list[Any]) -> list[Any]:
    return [e.data for e in events if e.event == "chat_reasoning"]


def contiguous(items: list[Any], first: int = 1) -> bool:
    return [i["seq"] for i in items] == list(range(first, first + len(items)))


async def test_sse_opted_in_ids_name_both_seqs_and_plain_ids_stay_integers(
    start_server: Any, make_settings: Any, http: aiohttp.ClientSession
) -> None:
    url = url_of(await reasoning_demo(start_server, make_settings, tps=200))
    body = {"message": "think", "reasoning": True}
    async with http.post(f"{url}/api/chat/stream", json=body, headers=SSE) as response:
        events = await SSEReader(response).until_end()
    thoughts, words = reasonings(events), tokens(events)
    assert thoughts
    assert words
    assert contiguous(thoughts)
    assert contiguous(words)
    # Every token and reasoning event names where the client is in both sequences.
    t = r = 0
    for event in events:
        if event.event == "chat_reasoning":
            r = event.data["seq"]
        elif event.event == "chat_token":
            t = event.data["seq"]
        else:
            assert event.id is None
            continue
        assert event.id == f"{t}.{r}"
    done = events[-1].data
    assert done["reasoning_chars"] == len("".join(x["reasoning"] for x in thoughts))
    assert "".join(w["token"] for w in words) == done["full_response"]

    # Without the opt-in: integer ids, text only, contiguous seqs.
    body = {"message": "think", "session_id": done["session_id"]}
    async with http.post(f"{url}/api/chat/stream", json=body, headers=SSE) as response:
        plain = await SSEReader(response).until_end()
    assert reasonings(plain) == []
    assert [e.id for e in plain if e.event == "chat_token"] == [
        str(n) for n in range(1, len(tokens(plain)) + 1)
    ]


async def test_last_event_id_resumes_mid_reasoning_with_no_gap_and_no_duplicate(
    start_server: Any, make_settings: Any, http: aiohttp.ClientSession
) -> None:
    url = url_of(await reasoning_demo(start_server, make_settings, tps=30))
    body = {"message": "resume my thoughts", "reasoning": True}
    response = await http.post(f"{url}/api/chat/stream", json=body, headers=SSE)
    reader = SSEReader(response)
    first: list[Any] = []
    while len(reasonings(first)) < 3:
        first.append(await reader.event())
    stream_id = response.headers["X-Stream-Id"]
    last_id = [e.id for e in first if e.id][-1]
    response.close()  # the connection drops mid-reasoning
    headers = {**SSE, "Last-Event-ID": last_id}
    resume = f"{url}/api/chat/stream/{stream_id}?reasoning=1"
    async with http.get(resume, headers=headers) as again:
        rest = await SSEReader(again).until_end(within=20)
    thoughts = reasonings(first) + reasonings(rest)
    words = tokens(first) + tokens(rest)
    assert contiguous(thoughts)
    assert contiguous(words)
    done = rest[-1].data
    assert "".join(w["token"] for w in words) == done["full_response"]
    assert len("".join(x["reasoning"] for x in thoughts)) == done["reasoning_chars"]

    # A plain follower of the same stream, resumed from the middle of the text.
    async with http.get(
        f"{url}/api/chat/stream/{stream_id}", headers={**SSE, "Last-Event-ID": "2"}
    ) as plain:
        tail = await SSEReader(plain).until_end()
    assert reasonings(tail) == []
    assert contiguous(tokens(tail), first=3)
    assert "".join(w["token"] for w in words[2:]) == "".join(w["token"] for w in tokens(tail))

    # Bad ids name the header.
    for bad in ("1.", "x.1", "1.-2"):
        async with http.get(
            f"{url}/api/chat/stream/{stream_id}?reasoning=1",
            headers={**SSE, "Last-Event-ID": bad},
        ) as refused:
            assert refused.status == 400
            assert (await refused.json())["error"]["message"].startswith("Last-Event-ID")


async def test_the_seqs_a_session_and_the_active_list_report_resume_with_nothing_skipped(
    start_server: Any, make_settings: Any, http: aiohttp.ClientSession
) -> None:
    """`seq` is the last chat_token seq and `reasoning_seq` the last chat_reasoning
    one (they once both read the log's position, the two kinds' sum): a client that
    resumes after them, as docs/http.md says to, gets the rest of each exactly."""
    url = url_of(await reasoning_demo(start_server, make_settings, tps=30))
    body = {"message": "count my seqs", "reasoning": True}
    response = await http.post(f"{url}/api/chat/stream", json=body, headers=SSE)
    reader = SSEReader(response)
    seen: list[Any] = []
    while len(tokens(seen)) < 2:  # all the reasoning, then some text
        seen.append(await reader.event())
    stream_id, session = response.headers["X-Stream-Id"], seen[0].data["session_id"]
    async with http.get(f"{url}/api/chat/sessions/{session}?reasoning=1") as got:
        active = (await got.json())["active_stream"]
    async with http.get(f"{url}/api/chat/sessions/{session}") as got:
        plain = (await got.json())["active_stream"]
    async with http.get(f"{url}/api/chat/stream/active?session_id={session}") as got:
        [listed] = (await got.json())["streams"]
    rest = await reader.until_end(within=20)
    response.close()
    thoughts, words = reasonings(seen + rest), tokens(seen + rest)
    # Every reasoning entry was logged before the text began.
    assert active["reasoning_seq"] == listed["reasoning_seq"] == len(thoughts)
    assert "reasoning_seq" not in plain
    for view in (active, plain, listed):
        assert 2 <= view["seq"] < len(words), view
    after = f"{active['seq']}.{active['reasoning_seq']}"
    async with http.get(
        f"{url}/api/chat/stream/{stream_id}?reasoning=1", headers={**SSE, "Last-Event-ID": after}
    ) as again:
        resumed = await SSEReader(again).until_end()
    assert reasonings(resumed) == []
    assert tokens(resumed) == words[active["seq"] :]


async def test_json_reply_and_session_view_carry_reasoning_only_when_asked(
    start_server: Any, make_settings: Any, http: aiohttp.ClientSession
) -> None:
    url = url_of(await reasoning_demo(start_server, make_settings, tps=400))
    body = {"message": "json please", "reasoning": True}
    async with http.post(f"{url}/api/chat/stream", json=body) as response:
        done = await response.json()
    assert done["reasoning"].startswith("The user sent 2 words.")
    assert done["reasoning_chars"] == len(done["reasoning"])
    session = done["session_id"]
    async with http.post(
        f"{url}/api/chat/stream", json={"message": "plain", "session_id": session}
    ) as response:
        plain = await response.json()
    assert "reasoning" not in plain
    async with http.get(f"{url}/api/chat/sessions/{session}?reasoning=1") as response:
        messages = (await response.json())["messages"]
    assert [m.get("reasoning") for m in messages if m["role"] == "assistant"] == [
        done["reasoning"],
        plain_reasoning(messages),
    ]
    async with http.get(f"{url}/api/chat/sessions/{session}") as response:
        assert all("reasoning" not in m for m in (await response.json())["messages"])


def plain_reasoning(messages: list[dict[str, Any]]) -> Any:
    """The second reply reasoned too (the provider's config asks): it is stored."""
    return messages[-1].get("reasoning")


async def test_usechat_gets_reasoning_parts_before_the_text(
    start_server: Any, make_settings: Any, http: aiohttp.ClientSession
) -> None:
    url = url_of(await reasoning_demo(start_server, make_settings, tps=400))
    payload = {
        "id": "thinking-chat",
        "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
        "trigger": "submit-message",
    }
    async with http.post(f"{url}/api/aisdk/chat", json=payload) as response:
        assert response.status == 200
        reader = UIStreamReader(response)
        chunks = await reader.until_done()
    kinds = [k for k in reader.kinds() if k != "reasoning-delta"]
    assert kinds == ["start", "reasoning-start", "reasoning-end", "text-start", "text-delta",
                     "text-end", "finish"]  # fmt: skip
    thought = "".join(c["delta"] for c in chunks if c["type"] == "reasoning-delta")
    assert thought.startswith("The user sent 1 word.")


async def test_many_sse_followers_with_and_without_reasoning(
    start_server: Any, make_settings: Any, http: aiohttp.ClientSession
) -> None:
    """Ten streams at once, each read by an opted-in and a plain SSE follower that
    resume mid-stream: every seq of each kind once, text equal to the reply."""
    url = url_of(await reasoning_demo(start_server, make_settings, tps=100))

    async def one(n: int) -> list[str]:
        problems: list[str] = []
        body = {"message": f"stream {n}", "reasoning": True}
        async with http.post(f"{url}/api/chat/stream", json=body, headers=SSE) as response:
            stream_id = response.headers["X-Stream-Id"]
            reader = SSEReader(response)
            head = [await reader.event() for _ in range(n % 4 + 1)]
            last = next((e.id for e in reversed(head) if e.id), None)
        headers = {**SSE, **({"Last-Event-ID": last} if last else {})}
        follow = f"{url}/api/chat/stream/{stream_id}"
        async with (
            http.get(f"{follow}?reasoning=1", headers=headers) as opted,
            http.get(follow, headers=SSE) as plain,
        ):
            rest, whole = await asyncio.gather(
                SSEReader(opted).until_end(within=30), SSEReader(plain).until_end(within=30)
            )
        done = whole[-1].data
        if not (contiguous(reasonings(head + rest)) and contiguous(tokens(head + rest))):
            problems.append(f"{n}: opted-in follower has a gap or a duplicate")
        if reasonings(whole) or not contiguous(tokens(whole)):
            problems.append(f"{n}: plain follower saw reasoning or a gap")
        for label, events in (("opted", head + rest), ("plain", whole)):
            if "".join(w["token"] for w in tokens(events)) != done["full_response"]:
                problems.append(f"{n}: {label} text differs")
        return problems

    results = await asyncio.gather(*(one(n) for n in range(10)))
    assert [p for problems in results for p in problems] == []
