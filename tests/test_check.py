"""`chatsock check [--ping]` against loopback fakes: the chain, key presence, pings and hints."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import pytest

from chatsock.check import run_check
from chatsock.config import Settings
from tests.fakes.upstream import FakeAnthropic, FakeOpenAI, Reply, unused_port

SECRET = "sk-check-0123456789abcdef"


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("CHATSOCK_PROVIDERS", raising=False)


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
async def fake_anthropic() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as fake:
        yield fake


def settings_for(providers: dict[str, dict[str, object]], chain: list[str]) -> Settings:
    return Settings.model_validate({"providers": providers, "chain": chain})


async def test_check_prints_the_chain_and_key_presence_never_the_key(
    fake_openai: FakeOpenAI,
) -> None:
    settings = settings_for(
        {
            "main": {"kind": "openai", "base_url": fake_openai.base_url, "api_key": SECRET},
            "ollama": {"kind": "openai", "base_url": "http://127.0.0.1:11434/v1"},
        },
        ["main", "ollama"],
    )
    out = io.StringIO()
    assert await run_check(settings, ping=False, out=out) == 0
    text = out.getvalue()
    assert "provider chain: main -> ollama" in text
    assert f"base_url={fake_openai.base_url}" in text
    main_line = next(line for line in text.splitlines() if line.strip().startswith("main"))
    ollama_line = next(line for line in text.splitlines() if line.strip().startswith("ollama"))
    assert "key=yes" in main_line
    assert "key=no" in ollama_line
    assert SECRET not in text
    assert fake_openai.requests == []


async def test_ping_reports_ok_with_latency_and_sends_a_one_token_request(
    fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic
) -> None:
    settings = settings_for(
        {
            "gpt": {"kind": "openai", "base_url": fake_openai.base_url, "max_retries": 0},
            "claude": {"kind": "anthropic", "base_url": fake_anthropic.base_url, "api_key": "k"},
        },
        ["gpt", "claude"],
    )
    out = io.StringIO()
    assert await run_check(settings, ping=True, out=out) == 0
    assert out.getvalue().count("OK in ") >= 2
    assert fake_openai.requests[0].body["max_tokens"] == 1
    assert fake_anthropic.requests[0].body["max_tokens"] == 1


async def test_ping_failures_give_hints_and_exit_code_1(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(Reply(status=401, error_message=f"bad key {SECRET}"))
    refused_url = f"http://127.0.0.1:{unused_port()}/v1"
    settings = settings_for(
        {
            "main": {
                "kind": "openai",
                "base_url": fake_openai.base_url,
                "api_key": SECRET,
                "max_retries": 0,
            },
            "local": {"kind": "openai", "base_url": refused_url, "max_retries": 0},
        },
        ["main", "local"],
    )
    out = io.StringIO()
    assert await run_check(settings, ping=True, out=out) == 1
    text = out.getvalue()
    assert "HTTP 401" in text
    assert "check the API key (OPENAI_API_KEY or providers.main.api_key" in text
    assert f"connection refused at {refused_url}: is the server running?" in text
    assert SECRET not in text


async def test_ping_names_ollama_when_its_default_port_refuses() -> None:
    # Nothing in this sandbox listens on Ollama's port; if something does, skip.
    settings = settings_for(
        {"ollama": {"kind": "openai", "base_url": "http://127.0.0.1:11434/v1", "max_retries": 0}},
        ["ollama"],
    )
    out = io.StringIO()
    code = await run_check(settings, ping=True, out=out)
    if code == 0:
        pytest.skip("something answers on 127.0.0.1:11434")
    assert "connection refused at http://127.0.0.1:11434/v1: is Ollama running?" in out.getvalue()


async def test_a_keyless_local_server_joins_the_default_chain_a_keyless_cloud_one_is_left_out(
    fake_openai: FakeOpenAI,
) -> None:
    """Without a configured chain: an OpenAI-compatible server with a base_url and
    no key (Ollama, vLLM...) is in it; a declared provider that needs a key and
    has none is left out, and check says why instead of silently serving demo."""
    settings = settings_for(
        {
            "ollama": {"kind": "openai", "base_url": fake_openai.base_url},
            "openai": {"kind": "openai"},
            "claude": {"kind": "anthropic"},
        },
        [],
    )
    out = io.StringIO()
    assert await run_check(settings, ping=False, out=out) == 0
    text = out.getvalue()
    assert "provider chain: ollama\n" in text
    openai_line = next(line for line in text.splitlines() if line.strip().startswith("openai "))
    claude_line = next(line for line in text.splitlines() if line.strip().startswith("claude "))
    assert "left out: no API key: set providers.openai.api_key or api_key_env" in openai_line
    assert "(or OPENAI_API_KEY)" in openai_line
    assert "left out: no API key: set providers.claude.api_key" in claude_line
