"""Prometheus metrics of one worker, in a registry of its own.

Each app builds its own `CollectorRegistry` (never prometheus-client's global
default), so a process may hold many apps (tests) and each worker process
exports exactly its own numbers on `GET /metrics`. Stream metrics are counted
by the worker that *owns* the stream (the runner's hooks), so summing a
metric over all workers counts every stream once.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from chatsock.runner import StreamHooks, StreamRunner
from chatsock.sessions import SessionService
from chatsock.store.models import StreamRecord

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
DURATION_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


def _loop_task_count() -> int:
    """Tasks of the running loop; 0 when rendered outside one (a test's sync call)."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return 0


class Metrics:
    """The worker's metrics; `stream_hooks()` feeds them from the runner."""

    def __init__(self, runner: StreamRunner, sessions: SessionService) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.active_streams = Gauge(
            "chatsock_active_streams", "Streams this worker is generating now.", registry=r
        )
        # Read at scrape time from the sets the runner and the namespace keep,
        # so the gauges cannot drift from the truth.
        self.active_streams.set_function(lambda: len(runner.streams))
        self.socketio_clients = Gauge(
            "chatsock_socketio_clients", "Socket.IO clients connected to this worker.", registry=r
        )
        self.socketio_clients.set_function(lambda: len(sessions.connected_sids))
        self.sse_followers = Gauge(
            "chatsock_sse_followers",
            "HTTP responses (SSE or waiting JSON) following a stream on this worker.",
            registry=r,
        )
        self.streams_started = Counter(
            "chatsock_streams_started", "Streams started on this worker.", registry=r
        )
        self.streams_completed = Counter(
            "chatsock_streams_completed", "Streams that ended with chat_complete.", registry=r
        )
        self.streams_stopped = Counter(
            "chatsock_streams_stopped",
            "Streams stopped by a client (chat_complete with stopped: true).",
            registry=r,
        )
        self.streams_errored = Counter(
            "chatsock_streams_errored",
            "Streams that ended with chat_stream_error, by error code.",
            ["code"],
            registry=r,
        )
        self.tokens_emitted = Counter(
            "chatsock_tokens_emitted",
            "chat_token events emitted: coalesced flushes, each holding one or more "
            "provider deltas.",
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "chatsock_time_to_first_token_seconds",
            "From the stream's start to the first provider delta.",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.stream_duration = Histogram(
            "chatsock_stream_duration_seconds",
            "From the stream's start to its terminal event, whatever the outcome.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.provider_failovers = Counter(
            "chatsock_provider_failovers",
            "Providers that failed before the first token and were failed over from.",
            ["provider"],
            registry=r,
        )
        self.stream_tasks = Gauge(
            "chatsock_stream_tasks",
            "Tasks the stream runner holds now (stream pumps and provider readers).",
            registry=r,
        )
        self.stream_tasks.set_function(lambda: runner.task_count)
        self.asyncio_tasks = Gauge(
            "chatsock_asyncio_tasks",
            "All asyncio tasks of this worker's event loop (a leak shows as a rising floor).",
            registry=r,
        )
        self.asyncio_tasks.set_function(_loop_task_count)
        self.loop_restarts = Counter(
            "chatsock_background_loop_restarts",
            "Background loops restarted after failing with an unexpected exception.",
            ["loop"],
            registry=r,
        )
        self.slow_clients_dropped = Counter(
            "chatsock_slow_clients_dropped",
            "Clients disconnected for not reading: a Socket.IO send queue over "
            "server.max_send_queue(_bytes) or a write over its timeout.",
            ["transport"],
            registry=r,
        )

    def stream_hooks(self) -> StreamHooks:
        """The runner hooks that update these metrics (all cheap, no I/O)."""
        return StreamHooks(
            on_start=self._started,
            on_first_token=self._first_token,
            on_flush=self._flushed,
            on_end=self._ended,
            on_failover=self._failed_over,
        )

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition body and its content type (OpenMetrics when asked for)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def _started(self, record: StreamRecord) -> None:
        self.streams_started.inc()

    def _first_token(self, record: StreamRecord, seconds: float) -> None:
        self.time_to_first_token.observe(seconds)

    def _flushed(self, seq: int) -> None:
        self.tokens_emitted.inc()

    def _ended(self, record: StreamRecord, code: str, seconds: float) -> None:
        # `code` is the terminal status ("complete", "stopped") or the error code.
        if code == "complete":
            self.streams_completed.inc()
        elif code == "stopped":
            self.streams_stopped.inc()
        else:
            self.streams_errored.labels(code=code).inc()
        self.stream_duration.observe(seconds)

    def _failed_over(self, provider: str) -> None:
        self.provider_failovers.labels(provider=provider).inc()

    def loop_restarted(self, loop: str) -> None:
        """The `BackgroundLoops` restart hook."""
        self.loop_restarts.labels(loop=loop).inc()
