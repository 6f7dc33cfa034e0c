"""The page and Socket.IO from other origins, in a real headless Chromium.

The HTTP API from a cross-origin page is covered in test_http_cors.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from chatsock.app import create_app
from chatsock.providers.demo import demo_reply
from tests.conftest import url_of
from tests.support.browser import run_browser_script

pytestmark = pytest.mark.node

APP_PAGE = "<!doctype html><html><head><title>an app</title></head><body>app</body></html>"


async def _chatsock(aiohttp_server: Any, make_settings: Any, origins: list[str]) -> TestServer:
    settings = make_settings(
        server={"cors_allowed_origins": origins}, demo={"tokens_per_second": 1000}
    )
    server: TestServer = await aiohttp_server(create_app(settings))
    return server


async def _app_origin(aiohttp_server: Any) -> str:
    """Another origin (another port) serving a bare page, as an app's own server would."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=APP_PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    server: TestServer = await aiohttp_server(app)
    return url_of(server)


@pytest.mark.parametrize("origins", [[], ["http://app.example"]], ids=["same-origin", "listed"])
async def test_the_bundled_page_works_under_its_csp_with_or_without_an_origin_list(
    aiohttp_server, make_settings, origins
):
    # With a list that does not name it, the page's own origin is still admitted.
    server = await _chatsock(aiohttp_server, make_settings, origins)
    result = await run_browser_script("cross_origin.mjs", "page", f"{url_of(server)}/")
    assert "failure" not in result, result
    assert result["reply"] == demo_reply("under a strict policy")
    assert result["violations"] == []
    assert result["consoleErrors"] == [], result["consoleErrors"]
    assert set(result["failedResponses"]) <= {"/favicon.ico"}, result["failedResponses"]
    assert result["inlineRan"] is False
    assert any(v.startswith("script-src") for v in result["violationsAfterInjection"])


@pytest.mark.parametrize("transports", ["polling,websocket", "websocket"])
async def test_a_listed_origin_uses_socketio_from_its_own_page(
    aiohttp_server, make_settings, transports
):
    app_origin = await _app_origin(aiohttp_server)
    server = await _chatsock(aiohttp_server, make_settings, [app_origin])
    result = await run_browser_script(
        "cross_origin.mjs", "app", f"{app_origin}/", url_of(server), transports, "false"
    )
    assert "failure" not in result, result
    assert result["origin"] == app_origin
    assert result.get("error") is None, result
    assert result["reply"] == demo_reply("from another origin")


@pytest.mark.parametrize("transports", ["polling,websocket", "websocket"])
async def test_an_unlisted_origin_cannot_connect(aiohttp_server, make_settings, transports):
    app_origin = await _app_origin(aiohttp_server)
    server = await _chatsock(aiohttp_server, make_settings, ["http://app.example"])
    result = await run_browser_script(
        "cross_origin.mjs", "app", f"{app_origin}/", url_of(server), transports, "false"
    )
    assert "failure" not in result, result
    assert result["connected"] is False
    assert "reply" not in result


async def test_any_origin_connects_but_never_with_credentials(aiohttp_server, make_settings):
    # With ["*"] the server never allows credentials, so a page that asks for
    # them (cookies on the polling requests) is refused by the browser itself.
    app_origin = await _app_origin(aiohttp_server)
    server = await _chatsock(aiohttp_server, make_settings, ["*"])
    plain = await run_browser_script(
        "cross_origin.mjs", "app", f"{app_origin}/", url_of(server), "polling", "false"
    )
    assert plain.get("error") is None, plain
    assert plain["reply"] == demo_reply("from another origin")
    credentialed = await run_browser_script(
        "cross_origin.mjs", "app", f"{app_origin}/", url_of(server), "polling", "true"
    )
    assert "failure" not in credentialed, credentialed
    assert credentialed["connected"] is False
