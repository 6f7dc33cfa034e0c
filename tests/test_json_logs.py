"""`server.log_format = "json"`: every line on stderr is one JSON object, and no chat text.

The formatter on its own first (ids from extras, from `bind_stream`, from the
message; a stable event name; a traceback as one field), then a real worker
with `CHATSOCK_SERVER__LOG_FORMAT=json` serving concurrent streams whose client
text holds newlines, quotes and ANSI escapes, plus refused requests, forged
paths and an unknown event name: its stderr is read line by line.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from yarl import URL

from chatsock.logsafe import JsonFormatter, bind_stream, event_name
from tests.support.clients import RecordingClient
from tests.support.invariants import (
    assert_none,
    check_follower,
    check_persisted,
    check_text,
    merge_tokens,
    seen,
    worker_problems,
)
from tests.support.limits import RELAXED_ENV
from tests.support.process import ROOT, free_port, wait_healthy

FIELDS = ("time", "level", "worker", "event", "stream_id", "session_id", "logger", "message")
STREAMS = 12
WORKER_ID = "json-worker-1"


def _chat_text(n: int) -> str:
    """Client text a log must never hold: newlines, quotes, ANSI, a forged line."""
    return (
        f'chat-secret-{n} says "hi"\nline two \x1b[31mred\x1b[0m '
        f'\r\n{{"level":"ERROR","message":"forged"}} \u2028 é 中文'
    )


# -- the formatter ------------------------------------------------------------------------


def _logger() -> tuple[logging.Logger, io.StringIO, JsonFormatter]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    formatter = JsonFormatter("w-test")
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"chatsock.test_json_logs.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger, out, formatter


def _is_utc(stamp: str) -> bool:
    offset = datetime.fromisoformat(stamp).utcoffset()
    return offset is not None and offset.total_seconds() == 0


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def test_a_record_is_one_json_line_with_every_field_and_its_text_escaped() -> None:
    logger, out, _ = _logger()
    logger.info("GET %s refused", "/x\n" + '{"level":"ERROR"}\x1b[2J\x9b\u202e')
    (line,) = _lines(out)
    assert list(line) == list(FIELDS)
    assert line["message"] == 'GET /x\\n{"level":"ERROR"}\\x1b[2J\\x9b\\u202e refused'
    assert line["level"] == "INFO"
    assert line["worker"] == "w-test"
    assert (line["stream_id"], line["session_id"]) == (None, None)
    assert line["time"].endswith("Z")
    assert _is_utc(line["time"])


def test_the_event_name_is_stable_across_values_and_an_extra_overrides_it() -> None:
    logger, out, _ = _logger()
    logger.info("stream %s: stop flag seen", "st_aaaaaaaaaaaaaaaa")
    logger.info("stream %s: stop flag seen", "st_bbbbbbbbbbbbbbbb")
    logger.info("%d streams of %-8s ended", 3, "x")
    logger.info("anything", extra={"event": "drain.begin"})
    first, second, third, fourth = _lines(out)
    assert first["event"] == second["event"] == f"{logger.name}:stream_stop_flag_seen"
    assert third["event"] == f"{logger.name}:streams_of_ended"
    assert fourth["event"] == "drain.begin"
    library = logging.makeLogRecord({"name": "engineio.server", "msg": "Invalid session ab\n"})
    assert event_name(library) == "engineio.server"


def test_stream_and_session_come_from_extras_then_the_task_then_the_message() -> None:
    logger, out, _ = _logger()
    logger.info("x", extra={"stream_id": "st_given", "session_id": "chosen-by-client"})
    logger.info("tailing %s: gone", "st_cccccccccccccccc")
    logger.info("follower on %s left", "ses_dddddddddddddddd")

    async def one_stream() -> None:
        bind_stream("st_eeeeeeeeeeeeeeee", "ses_ffffffffffffffff")
        logger.warning("the token log cannot be written")
        await asyncio.sleep(0)

    asyncio.run(one_stream())
    logger.info("after the stream's task")  # the binding stayed in that task
    given, parsed, session, bound, after = _lines(out)
    assert (given["stream_id"], given["session_id"]) == ("st_given", "chosen-by-client")
    assert (parsed["stream_id"], parsed["session_id"]) == ("st_cccccccccccccccc", None)
    assert (session["stream_id"], session["session_id"]) == (None, "ses_dddddddddddddddd")
    assert (bound["stream_id"], bound["session_id"]) == (
        "st_eeeeeeeeeeeeeeee",
        "ses_ffffffffffffffff",
    )
    assert (after["stream_id"], after["session_id"]) == (None, None)


def test_a_traceback_is_one_field_of_one_line() -> None:
    logger, out, _ = _logger()
    try:
        raise ValueError("bad\x1b[2J value\nforged line")
    except ValueError:
        logger.exception("handler for %s failed", "chat_stream")
    assert len(out.getvalue().splitlines()) == 1
    (line,) = _lines(out)
    assert line["level"] == "ERROR"
    assert line["exception"].startswith("Traceback (most recent call last):\n")
    assert line["exception"].endswith("ValueError: bad\\x1b[2J value\nforged line")


# -- a real worker --------------------------------------------------------------------


class JsonWorker:
    """`chatsock serve` with JSON logs; stderr and stdout kept apart."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stderr_path = tmp / "stderr.log"
        self.stdout_path = tmp / "stdout.log"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CHATSOCK_", "OPENAI_", "ANTHROPIC_")) and k != "REDIS_URL"
        }
        self.env = {
            **RELAXED_ENV,
            **env,
            "CHATSOCK_SERVER__LOG_FORMAT": "json",
            "CHATSOCK_SERVER__WORKER_ID": WORKER_ID,
            "CHATSOCK_DEMO_TOKENS_PER_SECOND": "400",
            "CHATSOCK_LIMITS__MAX_STREAMS_PER_USER": "100",
            "CHATSOCK_LIMITS__MAX_MESSAGE_CHARS": "2000",
            "CHATSOCK_SERVER__DRAIN_TIMEOUT_S": "5",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> JsonWorker:
        args = [sys.executable, "-m", "chatsock", "serve", "--port", str(self.port)]
        with open(self.stderr_path, "wb") as err, open(self.stdout_path, "wb") as out:
            self.proc = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=out, stderr=err)
        wait_healthy(self.proc, self.url, 60, "json worker", self.stderr)
        return self

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(5)


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[JsonWorker]:
    started = JsonWorker(tmp_path).start()
    yield started
    started.stop()


async def _stream(url: str, n: int) -> tuple[RecordingClient, dict[str, Any]]:
    client = await RecordingClient().connect(url)
    text = _chat_text(n)
    ack = await client.call(
        "chat_stream",
        {
            "message": text,
            "system_prompt": f"system {text}",
            "history": [
                {"role": "user", "content": f"earlier {text}"},
                {"role": "assistant", "content": f"reply {text}"},
            ],
        },
    )
    assert ack.get("ok"), ack
    await client.wait_terminal(ack["stream_id"], within=30)
    return client, ack


async def _refused(url: str, n: int) -> list[dict[str, Any]]:
    """Requests refused at INFO, each carrying chat text."""
    client = await RecordingClient().connect(url)
    try:
        too_long = await client.call("chat_stream", {"message": _chat_text(n) + "x" * 3000})
        bad_role = await client.call(
            "chat_stream",
            {"message": _chat_text(n), "history": [{"role": _chat_text(n), "content": "c"}]},
        )
        empty = await client.call("chat_stream", {"message": "", "system_prompt": _chat_text(n)})
        unknown = await client.call("no-such-event\n\x1b[2J", {"message": _chat_text(n)})
        return [too_long, bad_role, empty, unknown]
    finally:
        await client.close()


async def test_every_stderr_line_is_json_with_the_fields_and_no_chat_text(
    worker: JsonWorker, http: aiohttp.ClientSession
) -> None:
    results = await asyncio.gather(*(_stream(worker.url, n) for n in range(STREAMS)))
    refusals = await asyncio.gather(*(_refused(worker.url, STREAMS + n) for n in range(3)))
    try:
        problems: list[str] = []
        for client, ack in results:
            stream_id = ack["stream_id"]
            view = seen(client.events, stream_id)
            tokens, merge_problems = merge_tokens(stream_id, [view])
            problems += merge_problems
            problems += check_follower(stream_id, view, start=1, must_end=True, tokens=tokens)
            problems += check_text(stream_id, view.terminals[0], tokens)
            async with http.get(f"{worker.url}/api/chat/sessions/{ack['session_id']}") as reply:
                messages = (await reply.json())["messages"]
            problems += check_persisted(
                stream_id, messages, view.terminals[0][1]["message_id"], view.terminals[0]
            )
        problems += await worker_problems(http, worker.url)
        assert_none(problems)
        for replies in refusals:
            assert [reply["error"]["code"] for reply in replies] == ["invalid_request"] * 4, replies
        # Requests whose log lines name a stream and a session, and forged paths.
        stream_id, session_id = results[0][1]["stream_id"], results[0][1]["session_id"]
        async with http.get(f"{worker.url}/api/chat/stream/{stream_id}?after=0") as reply:
            await reply.read()
        forged = "%0A%7B%22level%22:%22ERROR%22%7D%1B[2J"
        async with http.get(URL(f"{worker.url}/nowhere{forged}", encoded=True)) as reply:
            assert reply.status == 404
    finally:
        await asyncio.gather(*(client.close() for client, _ in results))
    assert await asyncio.to_thread(worker.stop) == 0

    raw = worker.stderr()
    assert "\x1b" not in raw
    assert "\x9b" not in raw
    lines = [orjson.loads(line) for line in raw.splitlines()]  # each line one object
    assert len(lines) > STREAMS
    for line in lines:
        assert all(name in line for name in FIELDS), line
        assert line["worker"] == WORKER_ID, line
        assert line["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), line
        assert isinstance(line["event"], str), line
        assert line["event"], line
        assert _is_utc(line["time"]), line
    chat = [
        line
        for line in lines
        if any(f"chat-secret-{n}" in orjson.dumps(line).decode() for n in range(STREAMS + 3))
    ]
    assert chat == [], chat  # no chat text at any level, INFO included
    assert [line for line in lines if line["level"] in ("ERROR", "CRITICAL")] == []
    assert any(line["stream_id"] == stream_id for line in lines)
    assert any(line["event"] == "aiohttp.access" for line in lines)
    refused = [line for line in lines if "rejected: invalid_request" in line["message"]]
    assert len(refused) == 9, refused  # three of each refused chat_stream above
    assert any(line["session_id"] == session_id for line in lines)
    assert any("/nowhere%0A" in line["message"] for line in lines)
    assert any("no-such-event\\n\\x1b[2J" in line["message"] for line in lines)
