"""Secrets never shown: a base_url's user info, API keys, secret-looking config values.

End to end, a real `chatsock serve` worker streams from loopback fake upstreams
whose base URLs carry `user:password@`: a refused connection, an HTTP 500 and a
mid-stream drop. No Socket.IO event or ack, no HTTP reply and no log line of the
worker contains the user info; clients are told which provider failed, by name.
"""

from __future__ import annotations

import asyncio
import base64
import io
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from chatsock.check import run_check
from chatsock.config import Settings
from chatsock.store.urls import looks_like_key, looks_secret_name, mask_url, without_userinfo
from tests.fakes.upstream import FakeAnthropic, FakeOpenAI, Reply, unused_port
from tests.support.clients import RecordingClient
from tests.support.process import ROOT, Worker

USER = "opsuser"
PASSWORD = "pw-4e1f9c2b"
API_KEY = "sk-e2e-7d41a0c9b8e2f3a1"
USERINFO = f"{USER}:{PASSWORD}@"
# Every form in which the credentials could show up.
LEAKS = (
    PASSWORD,
    USER,
    API_KEY,
    base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
)


def _with_userinfo(url: str) -> str:
    return url.replace("http://", f"http://{USERINFO}", 1)


def _leaks(text: str) -> list[str]:
    return [secret for secret in LEAKS if secret in text]


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeOpenAI, FakeAnthropic]]:
    async with FakeOpenAI() as failing, FakeAnthropic() as dropping:
        yield failing, dropping


def _worker_config(tmp_path: Path, failing: FakeOpenAI, dropping: FakeAnthropic) -> Path:
    """A chain of three providers, each behind `user:password@`: one refuses the
    connection, one answers HTTP 500, one drops mid-reply (or 500s as scripted)."""
    refused = f"http://{USERINFO}127.0.0.1:{unused_port()}/v1"
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
chain = ["refused", "failing", "dropping"]
[server]
log_level = "DEBUG"
[providers.refused]
kind = "openai"
base_url = "{refused}"
api_key = "{API_KEY}"
max_retries = 0
[providers.failing]
kind = "openai"
base_url = "{_with_userinfo(failing.base_url)}"
api_key = "{API_KEY}"
max_retries = 0
[providers.dropping]
kind = "anthropic"
base_url = "{_with_userinfo(dropping.base_url)}"
api_key = "{API_KEY}"
max_retries = 0
"""
    )
    return path


def _script(failing: FakeOpenAI, dropping: FakeAnthropic, *, drop: bool) -> None:
    # An upstream that echoes the credentials it was sent, as verbose proxies do.
    echo = f"upstream auth failed for {USER}:{PASSWORD}"
    failing.enqueue(Reply(status=500, error_message=echo))
    if drop:
        dropping.enqueue(Reply(pieces=["Hel", "lo"], ending="reset", cut_after=1))
    else:
        dropping.enqueue(Reply(status=500, error_message=echo))


async def test_base_url_userinfo_reaches_no_client_and_no_log_line(
    tmp_path: Path, fakes: tuple[FakeOpenAI, FakeAnthropic]
) -> None:
    failing, dropping = fakes
    worker = Worker(config=_worker_config(tmp_path, failing, dropping)).start()
    seen: list[str] = []  # everything any client received, serialised
    try:
        client = await RecordingClient().connect(worker.url)
        http = aiohttp.ClientSession()
        try:
            # Socket.IO: refused and 500 fail over, then the stream drops after text.
            _script(failing, dropping, drop=True)
            ack = await client.call("chat_stream", {"message": "hi"})
            dropped = ack["stream_id"]
            event, payload = await client.wait_terminal(dropped, within=30)
            assert (event, payload["partial"]) == ("chat_stream_error", "Hel")
            assert "provider 'dropping'" in payload["error"]

            # Socket.IO: every provider fails before text.
            _script(failing, dropping, drop=False)
            ack = await client.call("chat_stream", {"message": "hi"})
            event, payload = await client.wait_terminal(ack["stream_id"], within=30)
            assert (event, payload["code"]) == ("chat_stream_error", "provider_unavailable")
            for name in ("refused", "failing", "dropping"):
                assert f"provider '{name}'" in payload["error"]
            assert "HTTP 500" in payload["error"]
            assert "connection refused" in payload["error"]
            joined = await client.call("session_join", {"session_id": ack["session_id"]})
            seen.append(orjson.dumps(joined).decode())
            seen.append(orjson.dumps(client.events).decode())

            # HTTP: the same two failures, as JSON replies, then the stored sessions.
            for drop in (True, False):
                _script(failing, dropping, drop=drop)
                async with http.post(
                    f"{worker.url}/api/chat/stream", json={"message": "hi"}
                ) as reply:
                    body = await reply.text()
                    assert reply.status >= 400, body
                    assert "provider '" in body
                    session_id = reply.headers["X-Session-Id"]
                seen.append(body)
                async with http.get(f"{worker.url}/api/chat/sessions/{session_id}") as reply:
                    seen.append(await reply.text())
            async with asyncio.timeout(15):
                async with http.get(f"{worker.url}/api/chat/stream/{dropped}") as reply:
                    seen.append(await reply.text())
        finally:
            await http.close()
            await client.close()
        worker.signal(signal.SIGTERM)
        worker.wait()
        log = worker.log()
    finally:
        worker.stop()

    # The credentials did reach the upstream, as Basic auth (which, as before with
    # httpx, takes the place of the API key's Bearer header).
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert failing.requests[0].headers["Authorization"] == basic
    assert dropping.requests[0].headers["Authorization"] == basic

    assert seen
    for text in seen:
        assert _leaks(text) == [], text
    assert "failing over" in log  # the log was captured, at DEBUG
    leaking = [line for line in log.splitlines() if _leaks(line)]
    assert leaking == []


async def test_check_shows_the_base_url_masked(fakes: tuple[FakeOpenAI, FakeAnthropic]) -> None:
    failing, _ = fakes
    failing.enqueue(Reply(status=500, error_message=f"no {PASSWORD}"))
    refused = f"http://{USERINFO}127.0.0.1:{unused_port()}/v1"
    settings = Settings.model_validate(
        {
            "providers": {
                "failing": {
                    "kind": "openai",
                    "base_url": _with_userinfo(failing.base_url),
                    "max_retries": 0,
                },
                "refused": {"kind": "openai", "base_url": refused, "max_retries": 0},
            },
            "chain": ["failing", "refused"],
        }
    )
    out = io.StringIO()
    assert await run_check(settings, ping=True, out=out) == 1
    text = out.getvalue()
    assert f"base_url={failing.base_url.replace('http://', 'http://***@')}" in text
    assert f"connection refused at http://***@127.0.0.1:{refused.rsplit(':', 1)[1]}" in text
    assert _leaks(text) == []


# -- start-up errors -------------------------------------------------------------------


def _serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatsock", "serve", "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", **env},
    )


def test_a_mistyped_secret_key_names_the_key_and_never_prints_its_value() -> None:
    secret = "sk-secret-2b7e151628aed2a6abf7158809cf4f3c"
    result = _serve(
        {
            "CHATSOCK_PROVIDERS__OPENAI__KIND": "openai",
            "CHATSOCK_PROVIDERS__OPENAI__API_KEYY": secret,
        }
    )
    assert result.returncode == 2
    assert "providers.openai.api_keyy" in result.stderr
    assert "(got '***')" in result.stderr
    assert secret not in result.stderr + result.stdout
    assert secret[:12] not in result.stderr


@pytest.mark.parametrize(
    ("name", "value", "key", "shown"),
    [
        # A key-shaped value under a name that does not look secret.
        (
            "CHATSOCK_STREAM__FLUSH_MAX_CHARS",
            "sk-live-0123456789abcdef",
            "flush_max_chars",
            "'***'",
        ),
        ("CHATSOCK_DEMO__MODELL", "a1B2c3D4e5F6g7H8i9J0k1L2m3N4", "demo.modell", "'***'"),
        # A URL with user info: shown, masked.
        (
            "CHATSOCK_PROVIDERS__LOCAL__BASE_URLL",
            f"https://{USERINFO}llm.internal/v1?api-key={PASSWORD}",
            "providers.local.base_urll",
            "'https://***@llm.internal/v1?api-key=%2A%2A%2A'",
        ),
        ("CHATSOCK_AUTH__JWT_SECRETT", "not-a-key-shape", "auth.jwt_secrett", "'***'"),
        # Ordinary values are still shown, so the error stays useful.
        ("CHATSOCK_STREAM__FLUSH_MAX_CHARS", "zero", "stream.flush_max_chars", "'zero'"),
        ("CHATSOCK_LIMITS__MAX_TOKENS", "-1", "limits.max_tokens", "'-1'"),
        ("CHATSOCK_AUTH__MODE", "jwtt", "auth.mode", "'jwtt'"),
    ],
)
def test_config_errors_mask_secret_looking_values(
    name: str, value: str, key: str, shown: str
) -> None:
    result = _serve({"CHATSOCK_PROVIDERS__LOCAL__KIND": "openai", name: value})
    assert result.returncode == 2, result.stderr
    line = next(line for line in result.stderr.splitlines() if key in line)
    assert line.endswith(f"(got {shown})"), line
    if shown != repr(value):
        assert value not in result.stderr
        assert PASSWORD not in result.stderr
        assert USER not in result.stderr


# -- the helpers' rules ----------------------------------------------------------------


def test_mask_url_masks_user_info_and_secret_parameters_only() -> None:
    url = f"https://{USERINFO}h:1/v1?api-version=2024&api-key=k1&sig=s2&token=t3&db=2"
    masked = mask_url(url, keep_user=False)
    assert masked.startswith("https://***@h:1/v1?")
    assert "api-version=2024" in masked
    assert "db=2" in masked
    for secret in ("k1", "s2", "t3", USER, PASSWORD):
        assert secret not in masked
    assert mask_url(f"https://{USERINFO}h/v1") == f"https://{USER}:***@h/v1"
    assert mask_url("https://h/v1?a=b c") == "https://h/v1?a=b c"  # untouched
    assert without_userinfo(f"http://{USER}:p%40ss@h:2/v1") == ("http://h:2/v1", USER, "p@ss")
    assert without_userinfo("http://h/v1") == ("http://h/v1", None, None)


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("api_key", True),
        ("api_keyy", True),
        ("jwt_secret", True),
        ("metrics_token", True),
        ("password", True),
        ("Authorization", True),
        ("credentials", True),
        ("max_tokens", False),
        ("daily_output_tokens", False),
        ("mode", False),
        ("base_url", False),
    ],
)
def test_secret_names(name: str, secret: bool) -> None:
    assert looks_secret_name(name) is secret


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("sk-proj-abc", True),
        ("ghp_0123456789", True),
        ("Bearer abc", True),
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl1", True),
        ("a1B2c3D4e5F6g7H8i9J0k1L2m3N4", True),
        ("gpt-4o-mini", False),
        ("claude-sonnet-5-5", False),
        ("/srv/chatsock/static/v2/assets", False),
        ("127.0.0.1", False),
        ("jwtt", False),
    ],
)
def test_key_shaped_values(value: str, key: bool) -> None:
    assert looks_like_key(value) is key


def test_provider_errors_tell_clients_the_provider_and_operators_the_masked_url() -> None:
    # Built without a network: the error texts are the provider's own.
    from chatsock.providers.errors import ErrorMapper

    mapper = ErrorMapper("gpt", mask_url(f"http://{USERINFO}h/v1", keep_user=False), [PASSWORD])
    error = mapper.http_status(502, {}, {"error": {"message": f"bad {PASSWORD}"}})
    assert error.message == "HTTP 502 from provider 'gpt': bad ***"
    assert error.detail == "HTTP 502 from http://***@h/v1: bad ***"
    refused = mapper.connection(OSError(f"{PASSWORD} said no"))
    assert refused.message == "could not connect (OSError) to provider 'gpt'"
    assert refused.detail == "could not connect (*** said no) to http://***@h/v1"
