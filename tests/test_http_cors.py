"""CORS on the HTTP API: `server.cors_allowed_origins` also governs `/api/`."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from chatsock.app import create_app
from chatsock.providers.demo import demo_reply
from tests.conftest import url_of
from tests.support.browser import run_browser_script
from tests.support.redis_server import free_port

APP = "http://app.example"


async def _server(aiohttp_server: Any, make_settings: Any, origins: list[str]) -> TestServer:
    settings = make_settings(
        server={"cors_allowed_origins": origins}, demo={"tokens_per_second": 1000}
    )
    server: TestServer = await aiohttp_server(create_app(settings), port=free_port())
    return server


async def test_no_origins_configured_means_no_cors_headers(aiohttp_server, make_settings, http):
    server = await _server(aiohttp_server, make_settings, [])
    response = await http.post(
        f"{url_of(server)}/api/chat/stream", json={"message": "hi"}, headers={"Origin": APP}
    )
    assert response.status == 200
    assert "Access-Control-Allow-Origin" not in response.headers
    preflight = await http.options(
        f"{url_of(server)}/api/chat/stream",
        headers={"Origin": APP, "Access-Control-Request-Method": "POST"},
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers


async def test_a_listed_origin_gets_preflights_and_headers(aiohttp_server, make_settings, http):
    server = await _server(aiohttp_server, make_settings, [APP])
    base = url_of(server)
    preflight = await http.options(
        f"{base}/api/chat/stream",
        headers={
            "Origin": APP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, last-event-id",
        },
    )
    assert preflight.status == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == APP
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "content-type" in allowed
    assert "last-event-id" in allowed
    assert "Access-Control-Allow-Credentials" not in preflight.headers

    response = await http.post(
        f"{base}/api/chat/stream", json={"message": "hi"}, headers={"Origin": APP}
    )
    assert response.headers["Access-Control-Allow-Origin"] == APP
    # Errors carry the header too, so a browser client can read the JSON error.
    bad = await http.post(f"{base}/api/chat/stream", json={}, headers={"Origin": APP})
    assert bad.status == 400
    assert bad.headers["Access-Control-Allow-Origin"] == APP
    assert (await bad.json())["error"]["message"].startswith("message")


async def test_an_unlisted_origin_is_refused_its_preflight(aiohttp_server, make_settings, http):
    server = await _server(aiohttp_server, make_settings, [APP])
    preflight = await http.options(
        f"{url_of(server)}/api/chat/sessions/s1",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "DELETE"},
    )
    assert preflight.status == 403
    assert "Access-Control-Allow-Origin" not in preflight.headers


@pytest.mark.node
@pytest.mark.parametrize("allowed", [True, False], ids=["origin-listed", "origin-not-listed"])
async def test_a_browser_page_on_another_origin(aiohttp_server, make_settings, allowed):
    port = free_port()
    page_origin = f"http://localhost:{port}"
    api = f"http://127.0.0.1:{port}"
    settings = make_settings(
        server={"cors_allowed_origins": [page_origin] if allowed else []},
        demo={"tokens_per_second": 1000},
    )
    await aiohttp_server(create_app(settings), port=port)
    result = await run_browser_script("cors.mjs", f"{page_origin}/healthz", api)
    assert "failure" not in result, result
    assert result["origin"] == page_origin
    if not allowed:  # the browser refuses every call
        assert all("Failed to fetch" in result[name]["error"] for name in ("json", "sse", "delete"))
        return
    assert result["json"]["full_response"] == demo_reply("one")
    sse = result["sse"]
    assert sse["streamId"], "X-Stream-Id must be exposed to the page"
    assert "event: chat_complete" in sse["text"]
    assert result["follow"] == {"tokens": demo_reply("two"), "full": demo_reply("two")}
    assert result["delete"] == {"status": 200}
