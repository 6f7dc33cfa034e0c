"""HTTP hardening: the Host allowlist, security headers, CORS credentials, /metrics access."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import orjson
import pytest
import socketio
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy

from chatsock.app import create_app
from chatsock.guards import HostAllowlist
from chatsock.metrics_site import METRICS_SITE
from tests.conftest import url_of
from tests.support.process import Worker
from tests.support.redis_server import free_port

EVIL = "http://evil.example"
APP = "http://app.example"
POLLING = "/socket.io/?EIO=4&transport=polling"


async def _serve(aiohttp_server: Any, make_settings: Any, **server: Any) -> TestServer:
    settings = make_settings(server=server, demo={"tokens_per_second": 1000})
    started: TestServer = await aiohttp_server(create_app(settings))
    return started


async def _get(
    http: aiohttp.ClientSession, url: str, **headers: str
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    async with http.get(url, headers=headers) as response:
        return response.status, response.headers, await response.read()


async def _sio_connect(url: str, transport: str, headers: dict[str, str]) -> None:
    """Connect to the chat namespace and leave; raises ConnectionError when refused.

    WebSocket: python-socketio's AsyncClient. Polling: the same exchange by hand,
    because the client's polling disconnect waits out a whole ping interval (~30 s).
    """
    if transport == "polling":
        await _polling_connect(url, headers)
        return
    client = socketio.AsyncClient(reconnection=False)
    try:
        await client.connect(url, transports=[transport], headers=headers, wait_timeout=10)
    finally:
        await client.disconnect()
        await client.shutdown()


async def _polling_connect(url: str, headers: dict[str, str]) -> None:
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{url}{POLLING}") as opened:
            if opened.status != 200:
                raise socketio.exceptions.ConnectionError(f"handshake: {opened.status}")
            sid = orjson.loads((await opened.text())[1:])["sid"]
        session = f"{url}{POLLING}&sid={sid}"
        async with http.post(session, data="40") as sent:
            assert sent.status == 200
        async with http.get(session) as reply:
            packets = await reply.text()
        if not packets.startswith("40{"):
            raise socketio.exceptions.ConnectionError(f"connect refused: {packets[:200]}")
        async with http.post(session, data="1") as closed:  # Engine.IO close
            assert closed.status == 200


# -- Host allowlist (DNS rebinding) -----------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/", "/static/dist/page.js", "/api/chat/sessions", POLLING, "/metrics", "/nope"]
)
async def test_a_rebound_host_is_refused_on_every_route_of_a_loopback_server(
    aiohttp_server, make_settings, http, path
):
    # DNS rebinding: a page on attacker.example re-points its name at 127.0.0.1,
    # so the browser reaches this server with `Host: attacker.example:port`.
    server = await _serve(aiohttp_server, make_settings)
    status, headers, body = await _get(
        http, f"{url_of(server)}{path}", Host=f"attacker.example:{server.port}"
    )
    assert status == 400
    assert headers["Content-Type"].startswith("application/json")
    assert "attacker.example" in body.decode()
    error = orjson.loads(body)["error"]
    assert error["code"] == "invalid_request"
    assert error["message"].startswith("Host: ")
    assert "not allowed" in error["message"]


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:9999", "LOCALHOST:1", "127.0.0.1:80", "[::1]", "[::1]:8080"]
)
async def test_a_loopback_server_serves_its_loopback_names_on_any_port(
    aiohttp_server, make_settings, http, host
):
    server = await _serve(aiohttp_server, make_settings)
    status, _, _ = await _get(http, f"{url_of(server)}/api/chat/sessions", Host=host)
    assert status == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_probes_answer_whatever_the_host(aiohttp_server, make_settings, http, path):
    # Kubernetes probes send the pod's address as Host.
    server = await _serve(aiohttp_server, make_settings, allowed_hosts=["chat.example"])
    status, _, _ = await _get(http, f"{url_of(server)}{path}", Host="10.1.2.3:8080")
    assert status == 200


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_a_socketio_connection_with_a_foreign_host_is_refused(
    aiohttp_server, make_settings, transport
):
    server = await _serve(aiohttp_server, make_settings)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await _sio_connect(url_of(server), transport, {"Host": "attacker.example"})
    await _sio_connect(url_of(server), transport, {"Host": f"localhost:{server.port}"})


async def test_an_explicit_allowlist_replaces_the_loopback_names(
    aiohttp_server, make_settings, http
):
    server = await _serve(
        aiohttp_server, make_settings, allowed_hosts=["Chat.Example", "api.example:8443"]
    )
    url = f"{url_of(server)}/api/chat/sessions"
    served = {
        host: (await _get(http, url, Host=host))[0]
        for host in ("chat.example", "chat.example:1234", "api.example:8443", "api.example:80",
                     "api.example", "localhost", "other.example")
    }  # fmt: skip
    assert served == {
        "chat.example": 200,
        "chat.example:1234": 200,
        "api.example:8443": 200,
        "api.example:80": 400,
        "api.example": 400,
        "localhost": 400,
        "other.example": 400,
    }


@pytest.mark.parametrize(
    "server_config",
    [{"allowed_hosts": ["*"]}, {"host": "0.0.0.0"}],
    ids=["star", "public-bind-default"],
)
async def test_any_host_is_served_with_star_or_a_public_bind(
    aiohttp_server, make_settings, http, server_config
):
    server = await _serve(aiohttp_server, make_settings, **server_config)
    status, _, _ = await _get(http, f"{url_of(server)}/api/chat/sessions", Host="anything.example")
    assert status == 200


async def test_a_refused_host_is_escaped_and_truncated_in_the_reply_and_the_log(
    aiohttp_server, make_settings, http, caplog
):
    server = await _serve(aiohttp_server, make_settings)
    hostile = '"><script>alert(1)</script>' + "x" * 5000
    with caplog.at_level(logging.INFO, logger="chatsock.guards"):
        status, _, body = await _get(http, f"{url_of(server)}/", Host=hostile)
    assert status == 400
    message = orjson.loads(body)["error"]["message"]
    assert len(message) < 300
    assert "x" * 200 not in message
    lines = [r.getMessage() for r in caplog.records if r.name == "chatsock.guards"]
    assert len(lines) == 1
    assert len(lines[0]) < 500
    assert "x" * 200 not in lines[0]


@pytest.mark.parametrize(
    "host", ["", "...", "local host", "[::1", "localhost:99999", "localhost:", "localhost:8o", "é"]
)
def test_a_malformed_host_header_is_never_allowed(host):
    assert not HostAllowlist(["localhost", "[::1]"]).allows(host)


def test_a_malformed_allowed_host_is_refused_at_start_naming_the_key(make_settings):
    settings = make_settings(server={"allowed_hosts": ["https://chat.example/"]})
    with pytest.raises(ValueError, match=r"server\.allowed_hosts: 'https://chat\.example/'"):
        create_app(settings)


# -- security headers -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/static/dist/page.js", "/static/style.css"])
async def test_the_page_is_served_with_a_csp_that_forbids_framing(
    aiohttp_server, make_settings, http, path
):
    server = await _serve(aiohttp_server, make_settings)
    status, headers, _ = await _get(http, f"{url_of(server)}{path}")
    assert status == 200
    csp = [d.strip() for d in headers["Content-Security-Policy"].split(";")]
    assert "default-src 'self'" in csp
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "object-src 'none'" in csp
    assert "base-uri 'none'" in csp
    connect = next(d for d in csp if d.startswith("connect-src"))
    assert (
        connect == f"connect-src 'self' ws://127.0.0.1:{server.port} wss://127.0.0.1:{server.port}"
    )
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer"


async def test_the_csp_echoes_only_a_well_formed_host(aiohttp_server, make_settings, http):
    server = await _serve(aiohttp_server, make_settings, allowed_hosts=["*"])
    status, headers, _ = await _get(http, f"{url_of(server)}/", Host="x; script-src *")
    assert status == 200
    csp = headers["Content-Security-Policy"]
    assert "script-src *" not in csp
    assert "connect-src 'self';" in csp


async def _upgrade_headers(port: int) -> str:
    """The head of the server's answer to a raw Engine.IO WebSocket upgrade."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        return head.decode("latin-1")
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(
    "path", ["/", "/healthz", "/readyz", "/api/chat/sessions", "/metrics", "/nope", POLLING]
)
async def test_no_response_names_the_server_software(aiohttp_server, make_settings, http, path):
    server = await _serve(aiohttp_server, make_settings)
    _, headers, _ = await _get(http, f"{url_of(server)}{path}")
    assert "Server" not in headers
    assert headers["X-Content-Type-Options"] == "nosniff"


async def test_a_websocket_upgrade_names_no_server_software(aiohttp_server, make_settings):
    server = await _serve(aiohttp_server, make_settings)
    head = await _upgrade_headers(server.port)
    assert head.startswith("HTTP/1.1 101")
    assert "\r\nserver:" not in head.lower()


# -- CORS -------------------------------------------------------------------------------


async def test_any_origin_never_gets_credentials_on_the_api_or_socketio(
    aiohttp_server, make_settings, http
):
    server = await _serve(aiohttp_server, make_settings, cors_allowed_origins=["*"])
    base = url_of(server)
    async with http.options(
        f"{base}/api/chat/stream",
        headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"},
    ) as preflight:
        assert preflight.headers["Access-Control-Allow-Origin"] in (EVIL, "*")
        assert "Access-Control-Allow-Credentials" not in preflight.headers
    status, headers, _ = await _get(http, f"{base}/api/chat/sessions", Origin=EVIL)
    assert status == 200
    assert "Access-Control-Allow-Credentials" not in headers
    # engineio's own default (cors_credentials=True) would echo the Origin *and*
    # allow credentials: any site could act as its visitor.
    status, headers, _ = await _get(http, f"{base}{POLLING}", Origin=EVIL)
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == EVIL
    assert "Access-Control-Allow-Credentials" not in headers


async def test_same_origin_only_refuses_other_origins_and_sends_no_credentials(
    aiohttp_server, make_settings, http
):
    server = await _serve(aiohttp_server, make_settings)
    base = url_of(server)
    status, headers, _ = await _get(http, f"{base}{POLLING}", Origin=base)
    assert status == 200
    assert "Access-Control-Allow-Credentials" not in headers
    status, _, _ = await _get(http, f"{base}{POLLING}", Origin=EVIL)
    assert status == 400


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_an_origin_list_still_admits_the_servers_own_origin(
    aiohttp_server, make_settings, transport
):
    # The page this server serves connects with Origin = the server's own origin.
    server = await _serve(aiohttp_server, make_settings, cors_allowed_origins=[APP + "/"])
    base = url_of(server)
    await _sio_connect(base, transport, {"Origin": base})
    await _sio_connect(base, transport, {"Origin": APP})
    with pytest.raises(socketio.exceptions.ConnectionError):
        await _sio_connect(base, transport, {"Origin": EVIL})


async def test_an_origin_list_admits_the_own_origin_behind_a_tls_proxy(
    aiohttp_server, make_settings, http
):
    # nginx terminates TLS and forwards Host and X-Forwarded-Proto.
    server = await _serve(
        aiohttp_server, make_settings, cors_allowed_origins=[APP], allowed_hosts=["chat.example"]
    )
    proxied = {"Host": "chat.example", "X-Forwarded-Proto": "https"}
    status, headers, _ = await _get(
        http, f"{url_of(server)}{POLLING}", Origin="https://chat.example", **proxied
    )
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "https://chat.example"
    assert "Access-Control-Allow-Credentials" not in headers
    status, _, _ = await _get(
        http, f"{url_of(server)}{POLLING}", Origin="https://evil.example", **proxied
    )
    assert status == 400


# -- /metrics ---------------------------------------------------------------------------


async def test_a_metrics_token_guards_metrics_but_not_the_probes(
    aiohttp_server, make_settings, http
):
    server = await _serve(aiohttp_server, make_settings, metrics_token="s3cret-scrape")
    base = url_of(server)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-scrape"}):
        status, answer, body = await _get(http, f"{base}/metrics", **headers)
        assert status == 401, headers
        assert answer["WWW-Authenticate"].startswith("Bearer ")
        assert orjson.loads(body)["error"]["code"] == "unauthorized"
        assert b"s3cret" not in body
    status, _, body = await _get(http, f"{base}/metrics", Authorization="Bearer s3cret-scrape")
    assert status == 200
    assert b"chatsock_active_streams" in body
    for probe in ("/healthz", "/readyz"):
        assert (await _get(http, f"{base}{probe}"))[0] == 200


async def test_a_metrics_port_serves_metrics_off_the_main_port(aiohttp_server, make_settings, http):
    server = await _serve(aiohttp_server, make_settings, metrics_port=0)
    site = server.app[METRICS_SITE]
    scrape = f"http://127.0.0.1:{site.port}/metrics"
    base = url_of(server)
    status, _, _ = await _get(http, f"{base}/metrics")
    assert status == 404
    async with http.post(f"{base}/api/chat/stream", json={"message": "count me"}) as reply:
        assert reply.status == 200
    # Scrapers address pods by IP: no Host check on the metrics port.
    status, headers, body = await _get(http, scrape, Host="10.0.0.7:9100")
    assert status == 200
    assert "chatsock_streams_started_total 1.0" in body.decode()
    assert "Server" not in headers
    assert (await _get(http, f"http://127.0.0.1:{site.port}/healthz"))[0] == 404
    for probe in ("/healthz", "/readyz"):
        assert (await _get(http, f"{base}{probe}"))[0] == 200
    await server.close()
    with pytest.raises(aiohttp.ClientConnectionError):
        await _get(http, scrape)


async def test_a_metrics_port_with_a_token_needs_the_token(aiohttp_server, make_settings, http):
    server = await _serve(aiohttp_server, make_settings, metrics_port=0, metrics_token="tok")
    scrape = f"http://127.0.0.1:{server.app[METRICS_SITE].port}/metrics"
    assert (await _get(http, scrape))[0] == 401
    assert (await _get(http, scrape, Authorization="Bearer tok"))[0] == 200


async def test_a_served_worker_hides_metrics_and_its_version(http):
    metrics_port = free_port()
    worker = Worker(env={"CHATSOCK_SERVER__METRICS_PORT": str(metrics_port)}).start()
    try:
        status, headers, _ = await _get(http, f"{worker.url}/metrics")
        assert status == 404
        assert "Server" not in headers
        status, _, body = await _get(http, f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        assert b"chatsock_active_streams" in body
        status, _, _ = await _get(http, f"{worker.url}/", Host="attacker.example")
        assert status == 400
    finally:
        await asyncio.to_thread(worker.stop)
