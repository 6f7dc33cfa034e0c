"""Log lines a client cannot forge: escaped control characters, cut values, no tracebacks.

The formatter on its own first, then a real worker receiving the attacks: a `%0A`
in a URL path, control characters in an Engine.IO session id, an over-long path,
a malformed HTTP request.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import uuid
from collections.abc import Iterator

import aiohttp
import pytest
from yarl import URL

from chatsock.logsafe import ARG_CHARS, FORMAT, LINE_CHARS, SafeFormatter, escape, shown
from tests.support.process import Worker
from tests.support.waiting import poll_until

FORGED = "2026-01-01 00:00:00,000 ERROR chatsock: forged"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")


# -- the formatter and shown() ------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "written"),
    [
        ("a\nb", "a\\nb"),
        ("a\r\nb", "a\\r\\nb"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("\x9b31m", "\\x9b31m"),  # the one-byte CSI (C1)
        ("\x00\x07\x7f", "\\x00\\x07\\x7f"),
        ("a\u2028b\u2029c\x85d", "a\\u2028b\\u2029c\\x85d"),
        ("\u202eevil\u2066", "\\u202eevil\\u2066"),
        ("tab\there", "tab\\there"),
        ("plain text, é and 中文", "plain text, é and 中文"),
    ],
)
def test_escape_writes_every_control_character_as_its_escape(raw: str, written: str) -> None:
    assert escape(raw) == written


def test_shown_quotes_escapes_and_cuts_client_text() -> None:
    assert shown("/api/x\n2026 ERROR forged") == "'/api/x\\n2026 ERROR forged'"
    assert shown("\x1b[31m\u202e") == "'\\x1b[31m\\u202e'"
    assert shown("a" * 500) == repr("a" * 200) + "...[+300 chars]"
    assert shown("abcdef", 3) == "'abc'...[+3 chars]"
    assert shown(None) == "'None'"
    assert len(shown("\n" * 10_000)) < 500


def _logger() -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(SafeFormatter(FORMAT))
    logger = logging.getLogger(f"test.logsafe.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger, out


def test_the_formatter_escapes_the_message_but_keeps_a_traceback_multiline() -> None:
    logger, out = _logger()
    logger.info("GET %s refused", "/x\n" + FORGED)
    try:
        raise ValueError("a server bug")
    except ValueError:
        logger.exception("handler for %s failed", "\x1b[2J")
    lines = out.getvalue().splitlines()
    assert TIMESTAMP.match(lines[0])
    assert lines[0].endswith(f"GET /x\\n{FORGED} refused")
    assert lines[1].endswith("handler for \\x1b[2J failed")
    assert lines[2] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: a server bug"
    assert not any(line.startswith(FORGED) for line in lines)


def test_the_formatter_cuts_long_arguments_not_the_template() -> None:
    logger, out = _logger()
    logger.info("a long template " + "t" * 400 + " with %s and %d", "x" * 5000, 7)
    logger.info("refused: %s", ValueError("y" * 5000))
    logger.info("%(path)s", {"path": "z" * 5000})
    first, second, third = out.getvalue().splitlines()
    assert "t" * 400 + " with " + "x" * ARG_CHARS + "...[+4700 chars] and 7" in first
    assert second.endswith("refused: " + "y" * ARG_CHARS + "...[+4700 chars]")
    assert third.endswith("z" * ARG_CHARS + "...[+4700 chars]")


def test_the_formatter_bounds_a_whole_line() -> None:
    logger, out = _logger()
    logger.info("%s", ["a" * 100] * 100)  # not a str, so not cut as an argument
    (line,) = out.getvalue().splitlines()
    assert len(line) < LINE_CHARS + 30
    assert line.endswith(" chars]")


def test_the_formatter_leaves_the_record_for_other_handlers() -> None:
    logger, out = _logger()
    seen: list[logging.LogRecord] = []
    recorder = logging.Handler()
    recorder.emit = seen.append  # type: ignore[method-assign]
    logger.addHandler(recorder)
    logger.info("%s", "x" * 5000)
    assert seen[0].args == ("x" * 5000,)
    assert "...[+4700 chars]" in out.getvalue()


# -- a real worker --------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    """One worker for the module: each test looks only at the lines its requests caused."""
    with pytest.MonkeyPatch.context() as env:
        for name in list(os.environ):  # what conftest's _isolated_env does per test
            if name.startswith(("CHATSOCK_", "OPENAI_", "ANTHROPIC_")) or name == "REDIS_URL":
                env.delenv(name)
        started = Worker()
    yield started.start()
    started.stop()


async def _logged(worker: Worker, http: aiohttp.ClientSession, *requests: str) -> list[str]:
    """The worker's log lines for `requests` ("METHOD /raw%20path"), sent as written."""
    before = len(worker.log().splitlines())
    for request in requests:
        method, _, path = request.partition(" ")
        async with http.request(method, URL(worker.url + path, encoded=True)) as reply:
            await reply.read()
    mark = uuid.uuid4().hex
    async with http.get(f"{worker.url}/healthz?{mark}") as reply:
        assert reply.status == 200
    assert await poll_until(lambda: f"?{mark} " in worker.log(), within=10)
    lines = worker.log().splitlines()[before:]
    return lines[: next(i for i, line in enumerate(lines) if f"?{mark} " in line)]


def _forged(lines: list[str]) -> list[str]:
    """Lines a client wrote: with no timestamp, or with the one it forged."""
    return [
        line
        for line in lines
        if "forged" in line and (line.startswith("2026-01-01") or not TIMESTAMP.match(line))
    ]


async def test_a_newline_in_a_url_path_cannot_forge_a_log_line(
    worker: Worker, http: aiohttp.ClientSession
) -> None:
    forged = "%0A2026-01-01%2000:00:00,000%20ERROR%20chatsock:%20forged"
    lines = await _logged(
        worker,
        http,
        f"GET /api/chat/stream/abc{forged}",
        f"GET /api/chat/sessions/abc{forged}",
        f"DELETE /api/chat/sessions/abc{forged}",
        f"POST /api/chat/stream/abc{forged}/stop",
        f"GET /nowhere{forged}%0D%1B[2J",
    )
    assert lines
    assert _forged(lines) == [], lines
    assert all(TIMESTAMP.match(line) for line in lines), lines
    assert "\x1b" not in worker.log()


async def test_the_access_log_keeps_a_path_percent_encoded(
    worker: Worker, http: aiohttp.ClientSession
) -> None:
    lines = await _logged(worker, http, "GET /nowhere%0Aforged%1B[31m?q=%0D%0Aforged")
    access = [line for line in lines if " aiohttp.access: " in line and "/nowhere" in line]
    assert len(access) == 1, lines
    assert '"GET /nowhere%0Aforged%1B[31m?q=%0D%0Aforged HTTP/1.1" 404' in access[0]


async def test_an_engineio_session_id_is_logged_escaped_on_one_line(
    worker: Worker, http: aiohttp.ClientSession
) -> None:
    """Engine.IO logs an unknown `sid` (from the query string, decoded) at ERROR."""
    lines = await _logged(
        worker,
        http,
        "GET /socket.io/?EIO=4&transport=polling&sid=ab%0A2026-01-01%20ERROR%20forged%1B[2J",
    )
    engine = [line for line in lines if "Invalid session" in line]
    assert len(engine) == 1, lines  # no second, unformatted copy from Engine.IO's own handler
    assert "Invalid session ab\\n2026-01-01 ERROR forged\\x1b[2J" in engine[0]
    assert _forged(lines) == [], lines


async def test_a_long_client_path_is_cut_in_the_log(
    worker: Worker, http: aiohttp.ClientSession
) -> None:
    lines = await _logged(worker, http, "GET /api/chat/stream/" + "a" * 7000)
    assert lines
    assert all(len(line) <= LINE_CHARS + 40 for line in lines), [len(line) for line in lines]


async def test_a_malformed_http_request_is_one_line_without_traceback(worker: Worker) -> None:
    before = len(worker.log().splitlines())
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    try:
        writer.write(
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"User-Agent: evil\x1b[31m\r\nConnection: close\r\n\r\n"
        )
        assert (await reader.read()).startswith(b"HTTP/1.0 400 ")
    finally:
        writer.close()
        await writer.wait_closed()
    assert await poll_until(
        lambda: "UNKNOWN / HTTP/1.0" in "".join(worker.log().splitlines()[before:]), within=10
    )
    lines = worker.log().splitlines()[before:]
    assert not any("Traceback" in line for line in lines), lines
    server = [line for line in lines if " aiohttp.server: " in line]
    assert len(server) == 1, lines
    assert "Invalid header value char" in server[0]
    assert "User-Agent: evil\\" in server[0]
    assert "\x1b" not in worker.log()
    assert all(TIMESTAMP.match(line) for line in lines), lines
