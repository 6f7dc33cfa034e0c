"""Configuration loading, env overrides, start-up errors and the CLI."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import urllib.request

import pytest

from chatsock.config import ConfigError, load_settings
from chatsock.providers.registry import build_registry
from tests.support.process import ROOT, Worker


def test_defaults_are_embedded(tmp_path):
    empty = tmp_path / "c.toml"
    empty.write_text("")
    settings = load_settings(empty)
    assert settings.server.port == 8080
    assert settings.server.host == "127.0.0.1"
    assert settings.store.redis_url == ""
    assert settings.stream.flush_interval_ms == 20
    assert settings.limits.max_message_chars == 32000
    assert settings.limits.max_streams_per_session == 1
    assert settings.demo.tokens_per_second == 40
    assert build_registry(settings).chain == ["demo"]


def test_the_shipped_config_toml_loads():
    settings = load_settings(ROOT / "config.toml")
    assert settings.server.port == 8080


def test_toml_values_and_env_overrides(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text("[stream]\nflush_interval_ms = 50\n[demo]\ntokens_per_second = 10\n")
    assert load_settings(path).stream.flush_interval_ms == 50
    monkeypatch.setenv("CHATSOCK_STREAM__FLUSH_INTERVAL_MS", "7")
    monkeypatch.setenv("CHATSOCK_DEMO_TOKENS_PER_SECOND", "99")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("CHATSOCK_PROVIDERS", "demo , demo")
    settings = load_settings(path)
    assert settings.stream.flush_interval_ms == 7
    assert settings.demo.tokens_per_second == 99
    assert settings.store.redis_url == "redis://127.0.0.1:1/0"
    assert settings.chain == ["demo", "demo"]


def test_config_path_from_env(tmp_path, monkeypatch):
    path = tmp_path / "other.toml"
    path.write_text("[server]\nport = 9191\n")
    monkeypatch.setenv("CHATSOCK_CONFIG", str(path))
    assert load_settings().server.port == 9191


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[stream]\nflush_interval_ms = -1\n", "stream.flush_interval_ms"),
        ('[server]\nport = "eighty"\n', "server.port"),
        ("[limits]\nmax_streams_per_session = 0\n", "limits.max_streams_per_session"),
        ("[stream]\nflush_intervall_ms = 5\n", "stream.flush_intervall_ms"),
        ('[providers.local]\nkind = "llama"\n', "providers.local.kind"),
    ],
)
def test_bad_values_name_the_key(tmp_path, toml, key):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert key in str(caught.value)


def test_unparseable_toml_and_missing_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[stream\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml")


def test_bad_env_value_stops_startup_with_the_key(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "chatsock", "serve", "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "CHATSOCK_STREAM__FLUSH_MAX_CHARS": "zero"},
    )
    assert result.returncode == 2
    assert "stream.flush_max_chars" in result.stderr


def test_unknown_provider_in_chain_stops_startup():
    result = subprocess.run(
        [sys.executable, "-m", "chatsock", "serve", "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "CHATSOCK_PROVIDERS": "nonesuch"},
    )
    assert result.returncode == 2
    assert "nonesuch" in result.stderr


async def test_serve_starts_on_embedded_defaults_with_host_and_port_flags():
    worker = Worker().start()
    try:

        def fetch(path: str) -> tuple[int, bytes]:
            with urllib.request.urlopen(f"{worker.url}{path}", timeout=5) as reply:
                return reply.status, reply.read()

        status, body = await asyncio.to_thread(fetch, "/healthz")
        assert (status, body) == (200, b'{"status": "ok"}')
        status, page = await asyncio.to_thread(fetch, "/")
        assert status == 200
        assert b"/static/dist/page.js" in page
        status, vendor = await asyncio.to_thread(fetch, "/static/vendor/socket.io.min.js")
        assert status == 200
        assert len(vendor) > 10000
        assert "MemoryStore" in worker.log()
        assert "providers: demo" in worker.log()
    finally:
        worker.stop()


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatsock", "serve", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def _said(result: subprocess.CompletedProcess[str]) -> list[str]:
    """What the server told the operator: its own lines, not log records."""
    return [line for line in result.stderr.splitlines() if line.startswith("chatsock: ")]


def test_a_port_in_use_is_one_line_and_never_a_ready_worker():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve("--port", str(port))
    assert result.returncode == 2
    assert _said(result) == [
        f"chatsock: cannot listen on 127.0.0.1:{port}: Address already in use; "
        "stop what holds it or choose another --port"
    ]
    assert " ready (store: " not in result.stderr + result.stdout  # the worker's ready line
    assert "Traceback" not in result.stderr


def test_an_unreachable_redis_is_one_line_that_says_what_to_do():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: refused
        result = _serve("--port", "0", env={"REDIS_URL": f"redis://:s3cret@127.0.0.1:{port}/0"})
    assert result.returncode == 2
    (line,) = _said(result)
    assert f"Redis is not reachable at redis://***@127.0.0.1:{port}/0" in line
    assert "start redis-server or unset REDIS_URL" in line
    assert "Traceback" not in result.stderr
    assert "s3cret" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://localhost:5173", ["http://localhost:5173"]),
        (
            "http://localhost:5173, https://app.example",
            ["http://localhost:5173", "https://app.example"],
        ),
        ('["http://a.example", "http://b.example"]', ["http://a.example", "http://b.example"]),
    ],
)
def test_a_list_in_the_environment_may_be_json_or_comma_separated(
    tmp_path, monkeypatch, value, expected
):
    path = tmp_path / "c.toml"
    path.write_text("[server]\nport = 9000\n")
    monkeypatch.setenv("CHATSOCK_SERVER__CORS_ALLOWED_ORIGINS", value)
    settings = load_settings(path)
    assert settings.server.cors_allowed_origins == expected
    assert settings.server.port == 9000  # the rest of the section still comes from the file


def test_an_unreadable_environment_table_is_one_message_not_a_traceback():
    result = _serve("--port", "0", env={"CHATSOCK_SERVER": "{not json"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = _said(result)
    assert "is JSON" in line


@pytest.mark.parametrize("section", ["server", "providers"])
def test_a_chain_under_a_section_says_it_is_a_top_level_key(tmp_path, section):
    path = tmp_path / "c.toml"
    path.write_text(f'[{section}]\nchain = ["demo"]\n')
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    assert f"{section}.chain:" in str(refused.value)
    assert "`chain` is a top-level key: put it above the first [section]" in str(refused.value)
