"""GET /metrics: Prometheus text from the app's own registry, moving as streams run."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from chatsock.providers.base import ProviderConnectionError, ProviderStreamError
from tests.conftest import url_of
from tests.fakes.provider import ScriptedProvider
from tests.support.http import SSE, SSEReader


class Scrape:
    """One parsed scrape: `scrape["name", {"label": "v"}]` is a sample's value (0 if absent)."""

    def __init__(self, text: str) -> None:
        self.samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def __getitem__(self, key: str | tuple[str, dict[str, str]]) -> float:
        name, labels = (key, {}) if isinstance(key, str) else key
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(http, server) -> Scrape:
    response = await http.get(f"{url_of(server)}/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return Scrape(await response.text())


async def _post(http, server, body):
    response = await http.post(f"{url_of(server)}/api/chat/stream", json=body)
    return response.status, await response.json()


async def test_metrics_exports_every_family_before_any_stream(server, http):
    text = await (await http.get(f"{url_of(server)}/metrics")).text()
    for name, kind in (
        ("chatsock_active_streams", "gauge"),
        ("chatsock_socketio_clients", "gauge"),
        ("chatsock_sse_followers", "gauge"),
        ("chatsock_streams_started_total", "counter"),
        ("chatsock_streams_completed_total", "counter"),
        ("chatsock_streams_stopped_total", "counter"),
        ("chatsock_streams_errored_total", "counter"),
        ("chatsock_tokens_emitted_total", "counter"),
        ("chatsock_time_to_first_token_seconds", "histogram"),
        ("chatsock_stream_duration_seconds", "histogram"),
        ("chatsock_provider_failovers_total", "counter"),
        ("chatsock_stream_tasks", "gauge"),
        ("chatsock_asyncio_tasks", "gauge"),
        ("chatsock_background_loop_restarts_total", "counter"),
        ("chatsock_slow_clients_dropped_total", "counter"),
    ):
        assert f"# TYPE {name} {kind}\n" in text, name
    # Nothing of prometheus-client's global default registry (process/GC collectors).
    assert "python_gc" not in text
    assert "process_cpu" not in text


async def test_completed_stream_moves_started_completed_tokens_and_histograms(
    server, http, fake_provider
):
    before = await scrape(http, server)
    fake_provider.enqueue("a").sleep(0.05).text("b").sleep(0.05).text("c")
    status, done = await _post(http, server, {"message": "hi"})
    assert status == 200
    after = await scrape(http, server)
    flushes = 3  # each piece arrives after the previous flush
    assert done["full_response"] == "abc"
    assert after["chatsock_streams_started_total"] - before["chatsock_streams_started_total"] == 1
    assert (
        after["chatsock_streams_completed_total"] == before["chatsock_streams_completed_total"] + 1
    )
    assert after["chatsock_tokens_emitted_total"] - before["chatsock_tokens_emitted_total"] == (
        flushes
    )
    assert after["chatsock_time_to_first_token_seconds_count"] == 1
    assert after["chatsock_stream_duration_seconds_count"] == 1
    assert after["chatsock_stream_duration_seconds_sum"] >= 0.1
    assert after["chatsock_active_streams"] == 0


async def test_stopped_errored_and_failover_streams_are_counted_by_kind(start_server, http):
    primary, backup = ScriptedProvider("primary"), ScriptedProvider("backup")
    server = await start_server(
        chain=["primary", "backup"], providers={"primary": primary, "backup": backup}
    )
    # A failover: primary refuses, backup answers.
    primary.enqueue().fail(ProviderConnectionError("refused", provider="primary"))
    backup.enqueue("from backup")
    assert (await _post(http, server, {"message": "one", "session_id": "m1"}))[0] == 200
    # An error mid-stream.
    primary.enqueue("half").fail(ProviderStreamError("reset", provider="primary"))
    assert (await _post(http, server, {"message": "two", "session_id": "m2"}))[0] == 502
    # A stop.
    script = primary.enqueue("part")
    gate = script.gate()
    response = await http.post(
        f"{url_of(server)}/api/chat/stream", json={"message": "three"}, headers=SSE
    )
    reader = SSEReader(response)
    await reader.event()
    await reader.event()
    during = await scrape(http, server)
    assert during["chatsock_active_streams"] == 1
    assert during["chatsock_sse_followers"] == 1
    await http.post(
        f"{url_of(server)}/api/chat/stream/stop",
        json={"stream_id": response.headers["X-Stream-Id"]},
    )
    await reader.until_end()
    assert not gate.is_set()

    after = await scrape(http, server)
    assert after["chatsock_streams_started_total"] == 3
    assert after["chatsock_streams_completed_total"] == 1
    assert after["chatsock_streams_stopped_total"] == 1
    assert after["chatsock_streams_errored_total", {"code": "provider_error"}] == 1
    assert after["chatsock_provider_failovers_total", {"provider": "primary"}] == 1
    assert after["chatsock_provider_failovers_total", {"provider": "backup"}] == 0
    assert after["chatsock_stream_duration_seconds_count"] == 3
    assert after["chatsock_active_streams"] == 0
    assert after["chatsock_sse_followers"] == 0


async def test_socketio_clients_gauge_follows_connects_and_disconnects(server, http, connect):
    assert (await scrape(http, server))["chatsock_socketio_clients"] == 0
    first = await connect(server)
    await connect(server)
    assert (await scrape(http, server))["chatsock_socketio_clients"] == 2
    await first.close()
    for _ in range(100):
        if (await scrape(http, server))["chatsock_socketio_clients"] == 1:
            break
        await asyncio.sleep(0.02)
    assert (await scrape(http, server))["chatsock_socketio_clients"] == 1


async def test_each_app_has_its_own_registry(start_server, http):
    providers = {"fake": ScriptedProvider("fake")}
    one = await start_server(chain=["fake"], providers=providers)
    two = await start_server(chain=["fake"], providers=providers)
    assert (await _post(http, one, {"message": "hi"}))[0] == 200
    assert (await scrape(http, one))["chatsock_streams_started_total"] == 1
    assert (await scrape(http, two))["chatsock_streams_started_total"] == 0


async def test_openmetrics_is_served_when_asked_for(server, http):
    response = await http.get(
        f"{url_of(server)}/metrics", headers={"Accept": "application/openmetrics-text"}
    )
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await response.text()).endswith("# EOF\n")


async def test_stream_tasks_gauge_counts_a_running_stream_and_returns_to_zero(
    server, http, fake_provider
):
    assert (await scrape(http, server))["chatsock_stream_tasks"] == 0
    script = fake_provider.enqueue("first ")
    gate = script.gate()
    script.text("second")
    response = await http.post(
        f"{url_of(server)}/api/chat/stream", json={"message": "hold"}, headers=SSE
    )
    reader = SSEReader(response)
    await reader.event()
    await reader.event()
    assert (await scrape(http, server))["chatsock_stream_tasks"] >= 1  # its pump, its reader
    gate.set()
    await reader.until_end()
    for _ in range(100):  # a task leaves the set in its done-callback, just after the end
        if (await scrape(http, server))["chatsock_stream_tasks"] == 0:
            break
        await asyncio.sleep(0.02)
    assert (await scrape(http, server))["chatsock_stream_tasks"] == 0
