"""`GET /api/providers`: what the page's picker offers is exactly what the policy
accepts, behind the API's auth, and never a base URL, key or header."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest

from chatsock.app import GATE
from chatsock.errors import ChatsockError
from chatsock.requests import ChatStreamRequest
from tests.conftest import url_of
from tests.fakes.upstream import FakeAnthropic, FakeOpenAI

SECRET = "p" * 64
KEY = "sk-test-do-not-leak-0123456789"


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[FakeOpenAI, FakeAnthropic]]:
    async with FakeOpenAI() as openai, FakeAnthropic() as anthropic:
        yield openai, anthropic


def _provider(fake: FakeOpenAI | FakeAnthropic, **config: Any) -> dict[str, Any]:
    kind = "openai" if isinstance(fake, FakeOpenAI) else "anthropic"
    return {"kind": kind, "base_url": fake.base_url, "api_key": KEY, "max_retries": 0,
            "headers": {"X-Secret-Header": "hidden-value"}, **config}  # fmt: skip


async def _get(
    http: aiohttp.ClientSession, url: str, token: str | None = None
) -> tuple[int, Any, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(f"{url}/api/providers", headers=headers) as reply:
        raw = await reply.text()
        return reply.status, await reply.json(), raw


async def test_the_default_worker_offers_its_demo_provider(start_server, http):
    server = await start_server()
    status, body, _ = await _get(http, url_of(server))
    assert status == 200
    assert body == {
        "default": {"provider": "demo", "model": "demo-1", "chain": ["demo"]},
        "providers": [
            {"name": "demo", "default_model": "demo-1", "models": ["demo-1"], "any_model": False}
        ],
    }


async def test_the_listing_is_the_policy_and_leaks_no_url_key_or_header(
    upstreams, start_server, make_settings, http
):
    openai, anthropic = upstreams
    settings = make_settings(
        providers={
            "anthropic": _provider(anthropic, model="claude-a", models=["*"]),
            "openai": _provider(openai, model="gpt-a", models=["gpt-b", "gpt-c"]),
            "spare": _provider(openai, model="gpt-s"),
            "offline": {"kind": "demo"},  # a demo provider outside the chain: not offered
        },
        chain=["anthropic", "openai"],
    )
    server = await start_server(settings)
    status, body, raw = await _get(http, url_of(server))
    assert status == 200
    assert body["default"] == {"provider": "anthropic", "model": "claude-a",
                               "chain": ["anthropic", "openai"]}  # fmt: skip
    assert body["providers"] == [
        {"name": "anthropic", "default_model": "claude-a", "models": [], "any_model": True},
        {"name": "openai", "default_model": "gpt-a", "models": ["gpt-a", "gpt-b", "gpt-c"],
         "any_model": False},
        {"name": "spare", "default_model": "gpt-s", "models": ["gpt-s"], "any_model": False},
    ]  # fmt: skip
    for secret in (KEY, "127.0.0.1", str(openai.base_url), "X-Secret-Header", "hidden-value"):
        assert secret not in raw
    # Every listed choice passes the policy the stream requests go through; others do not.
    policy = server.app[GATE].policy
    for offered in body["providers"]:
        for model in [None, offered["default_model"], *offered["models"]]:
            policy.check(ChatStreamRequest(message="hi", provider=offered["name"], model=model))
    with pytest.raises(ChatsockError, match="model: 'gpt-z' is not offered"):
        policy.check(ChatStreamRequest(message="hi", provider="openai", model="gpt-z"))
    with pytest.raises(ChatsockError, match="provider: 'offline' is not offered"):
        policy.check(ChatStreamRequest(message="hi", provider="offline"))


async def test_jwt_mode_needs_a_token_like_every_api_route(start_server, http):
    server = await start_server(auth={"mode": "jwt", "jwt_secret": SECRET})
    status, body, _ = await _get(http, url_of(server))
    assert status == 401
    assert body["error"]["code"] == "unauthorized"
    status, _, _ = await _get(http, url_of(server), token="not-a-token")
    assert status == 401
    now = int(time.time())
    token = jwt.encode({"sub": "alice", "iat": now, "exp": now + 600}, SECRET)
    status, body, _ = await _get(http, url_of(server), token=token)
    assert status == 200
    assert [p["name"] for p in body["providers"]] == ["demo"]


async def test_a_listed_origin_may_read_it(start_server, http):
    server = await start_server(server={"cors_allowed_origins": ["http://app.example"]})
    headers = {"Origin": "http://app.example"}
    async with http.get(f"{url_of(server)}/api/providers", headers=headers) as reply:
        assert reply.status == 200
        assert reply.headers["Access-Control-Allow-Origin"] == "http://app.example"
