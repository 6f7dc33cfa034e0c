"""Checks of chatsock's promises about streams, reusable by any test.

Each check returns a list of violations (strings naming the stream and what
broke) instead of asserting, so a stress test can collect every broken
promise of a run and report them together. `assert_none` turns a list into
one failure.

The promises (docs/protocol.md): a follower of a stream gets every `seq`
from where it started, once, then exactly one terminal event; the terminal's
`full_response`/`partial` is the text its tokens spell; the reply is stored
once with the status the terminal says; a stop acked `stopped: true` ends
the stream as stopped; an ended stream holds no slot and no task.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis

__all__ = [
    "TERMINALS",
    "Seen",
    "assert_none",
    "check_follower",
    "check_persisted",
    "check_stop_acks",
    "check_terminals_agree",
    "check_text",
    "half_done_streams",
    "half_registered",
    "log_problems",
    "merge_tokens",
    "occupied_slots",
    "seen",
    "stream_tasks",
    "terminal_status",
    "terminal_text",
    "worker_problems",
]

TERMINALS = ("chat_complete", "chat_stream_error")
Events = Sequence[tuple[str, Any]]


@dataclass
class Seen:
    """What one client received of one stream, in arrival order."""

    starts: list[dict[str, Any]] = field(default_factory=list)
    tokens: list[dict[str, Any]] = field(default_factory=list)
    terminals: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    after_terminal: list[str] = field(default_factory=list)  # events after the first terminal

    @property
    def seqs(self) -> list[int]:
        return [int(t["seq"]) for t in self.tokens]

    @property
    def last_seq(self) -> int:
        return max(self.seqs, default=0)

    @property
    def any(self) -> bool:
        return bool(self.starts or self.tokens or self.terminals)


def seen(events: Events, stream_id: str) -> Seen:
    """The events of `stream_id` among a client's recorded `(event, payload)` pairs."""
    found = Seen()
    for event, data in events:
        if not isinstance(data, dict) or data.get("stream_id") != stream_id:
            continue
        if found.terminals:
            found.after_terminal.append(event)
        if event == "chat_stream_start":
            found.starts.append(data)
        elif event == "chat_token":
            found.tokens.append(data)
        elif event in TERMINALS:
            found.terminals.append((event, data))
    return found


def terminal_text(event: str, payload: dict[str, Any]) -> str:
    """The text a terminal event reports: `full_response` or `partial`."""
    return str(payload["full_response"] if event == "chat_complete" else payload["partial"])


def terminal_status(event: str, payload: dict[str, Any]) -> str:
    """The stored message status a terminal event implies: complete, stopped or error."""
    if event == "chat_stream_error":
        return "error"
    return "stopped" if payload.get("stopped") else "complete"


def merge_tokens(label: str, views: Iterable[Seen]) -> tuple[dict[int, str], list[str]]:
    """Every seq's text as any follower got it; a seq with two texts is a violation."""
    tokens: dict[int, str] = {}
    problems: list[str] = []
    for view in views:
        for token in view.tokens:
            seq, text = int(token["seq"]), str(token["token"])
            if tokens.setdefault(seq, text) != text:
                problems.append(f"{label}: seq {seq} arrived as {text!r} and {tokens[seq]!r}")
    return tokens, problems


def check_follower(
    label: str,
    view: Seen,
    *,
    start: int | None,
    must_end: bool,
    tokens: dict[int, str] | None = None,
) -> list[str]:
    """One follower's view: no duplicate or missing seq from `start` (None: from
    its first seq, wherever that was), at most one terminal (exactly one with
    `must_end`), nothing after it, and the terminal's text is what the tokens spell.
    `tokens` is the stream's seq -> text map from every follower (`merge_tokens`)."""
    problems: list[str] = []
    if len(view.terminals) > 1:
        problems.append(f"{label}: {len(view.terminals)} terminal events")
    if must_end and not view.terminals:
        problems.append(f"{label}: no terminal event (last seq {view.last_seq})")
    if view.after_terminal:
        problems.append(f"{label}: {view.after_terminal[:3]} after its terminal event")
    if len(view.starts) > 1:
        problems.append(f"{label}: {len(view.starts)} chat_stream_start events")
    counts = Counter(view.seqs)
    duplicated = sorted(s for s, n in counts.items() if n > 1)
    if duplicated:
        problems.append(f"{label}: seqs {duplicated[:10]} arrived more than once")
    unique = sorted(counts)
    first = start if start is not None else (unique[0] if unique else None)
    if first is None:
        return problems
    ended = bool(view.terminals)
    last = max(tokens) if ended and tokens else (unique[-1] if unique else first - 1)
    missing = sorted(set(range(first, last + 1)) - set(unique))
    if missing:
        problems.append(f"{label}: seqs {missing[:10]} missing (from {first} to {last})")
    early = [s for s in unique if s < first]
    if early:
        problems.append(f"{label}: seqs {early[:10]} before its start {first}")
    if unique and unique[-1] > last:
        problems.append(f"{label}: seq {unique[-1]} beyond the stream's last seq {last}")
    if not ended:
        return problems
    event, payload = view.terminals[0]
    text = terminal_text(event, payload)
    own = {int(t["seq"]): str(t["token"]) for t in view.tokens}
    got = "".join(own[s] for s in sorted(own) if s >= first)
    known = tokens or {}
    if first == 1 or all(s in known for s in range(1, first)):
        expected = "".join(known[s] for s in range(1, first)) + got
        if expected != text:
            problems.append(
                f"{label}: the tokens spell {len(expected)} chars ending {expected[-40:]!r}; "
                f"its {event} says {len(text)} ending {text[-40:]!r}"
            )
    elif not text.endswith(got):
        problems.append(f"{label}: its tokens from seq {first} are not the end of the {event} text")
    return problems


def check_terminals_agree(label: str, terminals: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """Every follower got the same terminal event, payload included."""
    distinct: list[tuple[str, dict[str, Any]]] = []
    for terminal in terminals:
        if terminal not in distinct:
            distinct.append(terminal)
    if len(distinct) <= 1:
        return []
    shown = [(e, {k: p.get(k) for k in ("stopped", "code", "persist_failed")}) for e, p in distinct]
    return [f"{label}: followers got {len(distinct)} different terminal events: {shown}"]


def check_text(
    label: str, terminal: tuple[str, dict[str, Any]], tokens: dict[int, str]
) -> list[str]:
    """The stream's tokens (from every follower) run 1..N with no gap and spell the
    terminal's text. Only meaningful when some follower had the stream from seq 1."""
    event, payload = terminal
    text = terminal_text(event, payload)
    seqs = sorted(tokens)
    if seqs != list(range(1, len(seqs) + 1)):
        return [f"{label}: no follower saw seqs {sorted(set(range(1, seqs[-1] + 1)) - set(seqs))}"]
    spelled = "".join(tokens[s] for s in seqs)
    if spelled != text:
        return [
            f"{label}: the tokens sent spell {len(spelled)} chars ending {spelled[-40:]!r}; the "
            f"{event} text has {len(text)} ending {text[-40:]!r}"
        ]
    return []


def check_persisted(
    label: str,
    messages: Sequence[dict[str, Any]],
    message_id: str,
    terminal: tuple[str, dict[str, Any]] | None,
) -> list[str]:
    """The reply is stored exactly once (at most once when the terminal says
    persist_failed), with the terminal's status, text and error code."""
    stored = [m for m in messages if m.get("message_id") == message_id]
    if terminal is None:
        return [] if len(stored) == 1 else [f"{label}: reply stored {len(stored)} times"]
    event, payload = terminal
    if payload.get("persist_failed"):
        return [] if len(stored) <= 1 else [f"{label}: reply stored {len(stored)} times"]
    if len(stored) != 1:
        code = f" {payload.get('code')}" if event == "chat_stream_error" else ""
        return [f"{label}: reply stored {len(stored)} times (terminal {event}{code})"]
    message = stored[0]
    problems = []
    status = terminal_status(event, payload)
    if message.get("status") != status:
        problems.append(f"{label}: stored as {message.get('status')}, the {event} says {status}")
    text = terminal_text(event, payload)
    if message.get("content") != text:
        problems.append(
            f"{label}: stored text ({len(message.get('content') or '')} chars) differs from the "
            f"{event} text ({len(text)} chars)"
        )
    if event == "chat_stream_error" and message.get("error_code") != payload.get("code"):
        problems.append(
            f"{label}: stored error_code {message.get('error_code')}, the terminal says "
            f"{payload.get('code')}"
        )
    return problems


def check_stop_acks(
    label: str, acks: Sequence[dict[str, Any]], terminal: tuple[str, dict[str, Any]] | None
) -> list[str]:
    """A stop acked `stopped: true` ended the stream as stopped; a stopped stream had
    a stop acked `stopped: true`; every ack of a known stream is ok."""
    problems = [f"{label}: chat_stop answered {ack}" for ack in acks if not ack.get("ok")]
    said_stopped = any(ack.get("stopped") for ack in acks if ack.get("ok"))
    if terminal is None:
        return problems
    event, payload = terminal
    stopped = event == "chat_complete" and bool(payload.get("stopped"))
    if said_stopped and not stopped:
        what = event if event != "chat_stream_error" else f"{event} {payload.get('code')}"
        problems.append(f"{label}: a chat_stop acked stopped: true, the stream ended {what}")
    if stopped and not said_stopped:
        problems.append(f"{label}: ended stopped; no chat_stop acked stopped: true ({acks})")
    return problems


# -- the store ------------------------------------------------------------------
async def _records(client: aioredis.Redis, pattern: str) -> list[str]:
    return [str(key) async for key in client.scan_iter(match=pattern, count=1000)]


async def occupied_slots(redis_url: str, prefix: str) -> list[str]:
    """Slots still held: members of any session's `active` set and of the
    `streams:active` index, read straight from Redis (no pruning on the way)."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        problems = []
        for key in await _records(client, f"{prefix}:session:*:active"):
            members = sorted(str(m) for m in await client.smembers(key))
            if members:
                problems.append(f"slot set {key} still holds {members}")
        index = f"{prefix}:streams:active"
        members = [str(m) for m in await client.zrange(index, 0, -1)]
        if members:
            problems.append(f"index {index} still lists {len(members)}: {members[:5]}")
        return problems
    finally:
        await client.aclose()


async def half_done_streams(redis_url: str, prefix: str) -> list[str]:
    """Stream records with no recorded end: registered but never finished."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        problems = []
        record = re.compile(rf"^{re.escape(prefix)}:stream:[^:]+$")
        for key in await _records(client, f"{prefix}:stream:*"):
            if record.match(key) and not await client.exists(f"{key}:end"):
                problems.append(f"{key} has a record and no end")
        return problems
    finally:
        await client.aclose()


async def half_registered(redis_url: str, prefix: str) -> list[str]:
    """A registration is all or nothing, at any moment: every slot and index entry
    is a stream with a record and no end, and every stream with a record and no
    end holds its session's slot and an index entry. Read straight from Redis, so
    it can run while the workers cannot reach it (during an outage)."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        problems = []
        running: dict[str, str] = {}  # stream id -> session id, records with no end
        record = re.compile(rf"^{re.escape(prefix)}:stream:([^:]+)$")
        for key in await _records(client, f"{prefix}:stream:*"):
            found = record.match(key)
            if found is None or await client.exists(f"{key}:end"):
                continue
            raw = await client.get(key)
            if raw is not None:
                running[found.group(1)] = str(orjson.loads(raw)["session_id"])
        index = f"{prefix}:streams:active"
        indexed = {str(m) for m in await client.zrange(index, 0, -1)}
        slots: dict[str, set[str]] = {}
        for key in await _records(client, f"{prefix}:session:*:active"):
            slots[key] = {str(m) for m in await client.smembers(key)}
        for key, members in sorted(slots.items()):
            for stream_id in sorted(members - running.keys()):
                problems.append(f"slot {stream_id} in {key}: no record, or already ended")
        for stream_id in sorted(indexed - running.keys()):
            problems.append(f"{index} lists {stream_id}: no record, or already ended")
        for stream_id, session_id in sorted(running.items()):
            if stream_id not in slots.get(f"{prefix}:session:{session_id}:active", ()):
                problems.append(f"{stream_id} has a record and no end, yet holds no slot")
            if stream_id not in indexed:
                problems.append(f"{stream_id} has a record and no end, yet is not in {index}")
        return problems
    finally:
        await client.aclose()


# -- the workers ----------------------------------------------------------------
_STREAM_TASKS = re.compile(r"^chatsock_stream_tasks\s+(\S+)$", re.MULTILINE)


async def stream_tasks(http: aiohttp.ClientSession, base_url: str) -> float | None:
    """The worker's `chatsock_stream_tasks` gauge; None when it has no such metric."""
    async with http.get(f"{base_url}/metrics") as reply:
        found = _STREAM_TASKS.search(await reply.text())
    return float(found.group(1)) if found else None


async def worker_problems(http: aiohttp.ClientSession, base_url: str) -> list[str]:
    """No stream left active, no stream task left, ready, and every background loop alive."""
    problems = []
    async with http.get(f"{base_url}/api/chat/stream/active") as reply:
        body = await reply.json()
    if reply.status != 200 or body.get("count"):
        problems.append(f"{base_url}: /api/chat/stream/active answered {reply.status} {body}")
    tasks = await stream_tasks(http, base_url)
    if tasks is None:
        problems.append(f"{base_url}: /metrics has no chatsock_stream_tasks gauge")
    elif tasks:
        problems.append(f"{base_url}: chatsock_stream_tasks is {tasks:g} after every stream ended")
    async with http.get(f"{base_url}/readyz") as reply:
        ready = await reply.json(content_type=None)
    if reply.status != 200:
        problems.append(f"{base_url}: /readyz answered {reply.status}: {ready}")
    loops = ready.get("loops")
    if loops is None:
        problems.append(f"{base_url}: /readyz reports no background loops")
    else:
        for name, state in loops.items():
            if state.get("state") not in ("running", "done") or state.get("failures"):
                problems.append(f"{base_url}: background loop {name!r}: {state}")
    return problems


_BAD = re.compile(
    r"Traceback|Task exception was never retrieved|dictionary changed size|"
    r"Task was destroyed but it is pending|\b(ERROR|CRITICAL)\b"
)
_RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d")


def _records_of(log: str) -> list[list[str]]:
    """A log split into records: a timestamped line and its continuation lines."""
    records: list[list[str]] = []
    for line in log.splitlines():
        if _RECORD_START.match(line) or not records:
            records.append([line])
        else:
            records[-1].append(line)
    return records


def log_problems(name: str, log: str, allowed: Sequence[str] = ()) -> list[str]:
    """Log records that show a bug (tracebacks, lost task exceptions, ERROR lines),
    except those matching one of the `allowed` regexes; one entry per distinct
    record (its message and the traceback's last line), with how often it came."""
    found: Counter[str] = Counter()
    for record in _records_of(log):
        text = "\n".join(record)
        if not _BAD.search(text) or any(re.search(a, text) for a in allowed):
            continue
        head = re.sub(r"^\S+ \S+ ", "", record[0])  # without the timestamp
        head = re.sub(r"\b(st|msg|ses)_\w+", r"\1_*", head)
        tail = next((line.strip() for line in reversed(record[1:]) if line.strip()), "")
        found[f"{head[:200]}{' | ' + tail[:200] if tail else ''}"] += 1
    return [f"{name} log ({n}x): {entry}" for entry, n in found.most_common()]


def assert_none(problems: Sequence[str], limit: int = 60) -> None:
    """Fail with every problem listed (the first `limit`), grouped by kind."""
    if not problems:
        return
    shown = "\n".join(f"  - {p}" for p in problems[:limit])
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    raise AssertionError(f"{len(problems)} broken promise(s):\n{shown}{more}")
