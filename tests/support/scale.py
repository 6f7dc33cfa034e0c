"""Many concurrent streams from node (tests/js/scale.mjs), and the checks of each.

`run_scale` drives the node load; `check_streams` holds every stream to
docs/protocol.md's promises: its starter (and its second tab, if any) got
seq 1..N once and exactly one terminal, `chat_complete` with the demo
provider's whole reply, stored once in the session (a second tab that
joined once the stream had ended finds it in its `session_join` ack); and no socket got a
`chat_stream_error` at all. `check_drained` then wants the workers idle and no
slot left in Redis. Set SCALE_DUMP to a file name to keep what node saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from chatsock.identity import ANONYMOUS_USER
from chatsock.providers.demo import demo_reply
from tests.support.invariants import (
    Seen,
    check_follower,
    check_persisted,
    check_text,
    half_done_streams,
    merge_tokens,
    occupied_slots,
    seen,
    worker_problems,
)
from tests.support.node import ROOT, require_node

SCRIPT = ROOT / "tests" / "js" / "scale.mjs"


@dataclass
class ScaleRun:
    """What tests/js/scale.mjs did and received."""

    streams: list[dict[str, Any]]
    sockets: list[dict[str, Any]]
    problems: list[str]
    wall_s: float

    def accepted(self) -> list[dict[str, Any]]:
        return [s for s in self.streams if s["ack"] and s["ack"].get("ok")]

    def events(self, socket: int) -> list[tuple[str, Any]]:
        return [(name, data) for name, data in self.sockets[socket]["events"]]


async def run_scale(within: float, **args: Any) -> ScaleRun:
    """Run tests/js/scale.mjs with `args` (see its header); `within` bounds the whole run."""
    proc = await asyncio.create_subprocess_exec(
        require_node(),
        str(SCRIPT),
        json.dumps(args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        limit=256 * 1024 * 1024,
    )
    started = time.monotonic()
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()
    keep = os.environ.get("SCALE_DUMP")
    if keep:  # what node saw, to study a failure
        await asyncio.to_thread(Path(keep).write_bytes, out)
    body = json.loads(out)
    return ScaleRun(body["streams"], body["sockets"], body["problems"], time.monotonic() - started)


def error_events(run: ScaleRun) -> Counter[str]:
    """Every `chat_stream_error` any socket got, by code and message."""
    found: Counter[str] = Counter()
    for socket in run.sockets:
        for name, data in socket["events"]:
            if name == "chat_stream_error":
                found[f"{data.get('code')}: {data.get('error')}"] += 1
    return found


def late_joins(run: ScaleRun) -> int:
    """How many second tabs joined after their stream had ended."""
    return sum(1 for s in run.accepted() if (s["join"] or {}).get("active_stream", 1) is None)


def refusals(run: ScaleRun) -> Counter[str]:
    """Every refused `chat_stream`, `session_join` or `chat_resume`, by event and code."""
    found: Counter[str] = Counter()
    for stream in run.streams:
        for what in ("ack", "join", "resume"):
            reply = stream.get(what)
            if reply is not None and not reply.get("ok"):
                error = reply.get("error") or {}
                found[f"{what}: {error.get('code')}: {error.get('message')}"] += 1
    return found


async def check_streams(
    run: ScaleRun, http: aiohttp.ClientSession, session_url: str, *, followed: bool
) -> list[str]:
    """Every stream of `run` kept its promises (module doc); `session_url` is the
    worker asked for each session's stored messages."""
    problems = [f"node: {p}" for p in run.problems]
    problems += [f"{n} x {what}" for what, n in refusals(run).items()]
    problems += [f"{n} x chat_stream_error {what}" for what, n in error_events(run).items()]
    limit = asyncio.Semaphore(16)

    async def check(stream: dict[str, Any]) -> list[str]:
        async with limit:
            messages = await session_messages(http, session_url, stream["ack"]["session_id"])
        return check_stream(run, stream, messages, followed=followed)

    for found in await asyncio.gather(*(check(s) for s in run.accepted())):
        problems += found
    return problems


def check_stream(
    run: ScaleRun, stream: dict[str, Any], messages: list[dict[str, Any]], *, followed: bool
) -> list[str]:
    """One stream: each view complete and once, the text the demo reply, stored once."""
    ack = stream["ack"]
    stream_id = ack["stream_id"]
    label = f"stream {stream['index']} {stream_id}"
    # (who, what it saw, the first seq it must get or None, whether it must see the end)
    views: list[tuple[str, Seen, int | None, bool]] = [
        ("starter", seen(run.events(stream["owner"]), stream_id), 1, True)
    ]
    problems: list[str] = []
    join = stream["join"] or {}
    if followed and join.get("ok"):
        tab = seen(run.events(stream["follower"]), stream_id)
        if join["active_stream"] is None:
            # It had ended when the tab joined: the reply is in the join ack, and
            # nothing of that stream may reach the tab live any more.
            if tab.tokens or tab.terminals:
                problems.append(
                    f"{label}: the second tab joined after its end, yet got "
                    f"{len(tab.tokens)} tokens and {len(tab.terminals)} terminals live"
                )
        elif (stream["resume"] or {}).get("ok"):
            views.append(("second tab", tab, 1, True))
    tokens, conflicts = merge_tokens(label, (view for _, view, _, _ in views))
    problems += conflicts
    for who, view, first, must_end in views:
        problems += check_follower(
            f"{label} at its {who}", view, start=first, must_end=must_end, tokens=tokens
        )
    terminal = next((view.terminals[0] for _, view, _, _ in views if view.terminals), None)
    if terminal is None:
        return problems
    event, payload = terminal
    if event != "chat_complete" or payload.get("stopped"):
        what = f"{payload.get('code')}: {payload.get('error')}" if "code" in payload else "stopped"
        text = len(payload.get("partial") or payload.get("full_response") or "")
        return [*problems, f"{label}: ended {event} ({what}) after {text} chars"]
    problems += check_text(label, terminal, tokens)
    if payload["full_response"] != demo_reply(stream["message"]):
        problems.append(f"{label}: full_response is not the demo provider's reply")
    problems += check_persisted(label, messages, ack["message_id"], terminal)
    if followed and join.get("ok") and join["active_stream"] is None:
        where = f"{label} in the second tab's session_join ack"
        problems += check_persisted(where, join["messages"], ack["message_id"], terminal)
    return problems


async def session_messages(
    http: aiohttp.ClientSession, url: str, session_id: str
) -> list[dict[str, Any]]:
    async with http.get(f"{url}/api/chat/sessions/{session_id}") as reply:
        assert reply.status == 200, f"GET session {session_id}: {reply.status} {await reply.text()}"
        body = await reply.json()
    messages: list[dict[str, Any]] = body["messages"]
    return messages


async def active_streams(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(f"{url}/api/chat/stream/active") as reply:
        count: int = (await reply.json())["count"]
        return count


async def check_drained(
    http: aiohttp.ClientSession, urls: list[str], redis_url: str, prefix: str, within: float
) -> list[str]:
    """Once the streams ended: no stream active or task left on any worker, and no
    slot or half-finished stream left in Redis (the anonymous user's set included)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        counts = [await active_streams(http, url) for url in urls]
        if not any(counts):
            break
        await asyncio.sleep(0.25)
    problems: list[str] = []
    for url in urls:
        problems += await worker_problems(http, url)
    problems += await occupied_slots(redis_url, prefix)
    problems += await half_done_streams(redis_url, prefix)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        key = f"{prefix}:user:{ANONYMOUS_USER}:active"
        left = await client.smembers(key)
        if left:
            problems.append(f"{key} still holds {len(left)} streams: {sorted(left)[:5]}")
    finally:
        await client.aclose()
    return problems


_STORE_TROUBLE = re.compile(r"unavailable|Too many connections|ConnectionError|TimeoutError")


def store_warnings(name: str, log: str) -> list[str]:
    """Worker log lines about the store failing (logged below ERROR, so
    `log_problems` passes them), one entry per distinct message."""
    found: Counter[str] = Counter()
    for line in log.splitlines():
        if _STORE_TROUBLE.search(line):
            message = re.sub(r"^\S+ \S+ ", "", line)  # without the timestamp
            found[re.sub(r"\b(st|msg|ses)_\w+|from \S+:", r"\1_*", message)[:300]] += 1
    return [f"{name} log ({n}x): {message}" for message, n in found.most_common()]
