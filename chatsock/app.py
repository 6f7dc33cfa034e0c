"""The app factory: builds every part of a chatsock worker, nothing at import time."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import socketio
from aiohttp import web

from chatsock import jsoncodec, protocol
from chatsock.aisdk import AiSdkChat
from chatsock.auth import Authenticator
from chatsock.config import Settings
from chatsock.cors import socketio_cors
from chatsock.drain import Drain
from chatsock.fanout import Fanout
from chatsock.gate import Gate
from chatsock.guards import install_guards
from chatsock.http_api import HttpApi
from chatsock.http_log import RequestErrors, hide_server_version
from chatsock.ids import new_id
from chatsock.logsafe import name_worker
from chatsock.loops import BackgroundLoops
from chatsock.metrics import Metrics
from chatsock.namespace import ChatNamespace
from chatsock.policy import ClientPolicy
from chatsock.providers.base import Provider
from chatsock.providers.registry import ProviderRegistry, build_registry
from chatsock.providers_api import ProvidersApi
from chatsock.quotas import Quotas
from chatsock.runner import StreamRunner
from chatsock.send_queue import SendLimits
from chatsock.sessions import SessionService
from chatsock.signals import SignalBus
from chatsock.sio_manager import WatchedRedisManager, manager_options
from chatsock.sio_server import ChatsockServer
from chatsock.store import Store, create_store
from chatsock.tailer import decode_ends, encode_ends
from chatsock.timing import LISTENER_DEAF_S
from chatsock.web import add_page_routes

log = logging.getLogger(__name__)


SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
REGISTRY = web.AppKey("registry", ProviderRegistry)
SIO = web.AppKey("sio", socketio.AsyncServer)
FANOUT = web.AppKey("fanout", Fanout)
RUNNER = web.AppKey("runner", StreamRunner)
SESSIONS = web.AppKey("sessions", SessionService)
BUS = web.AppKey("bus", SignalBus)
MANAGER = web.AppKey("manager", WatchedRedisManager)
METRICS = web.AppKey("metrics", Metrics)
LOOPS = web.AppKey("loops", BackgroundLoops)
GATE = web.AppKey("gate", Gate)
NAMESPACE = web.AppKey("namespace", ChatNamespace)
DRAIN = web.AppKey("drain", Drain)


def _worker_id(settings: Settings) -> str:
    return settings.server.worker_id or f"{socket.gethostname()}-{os.getpid()}-{new_id('w')[2:8]}"


def create_app(
    settings: Settings,
    *,
    providers: dict[str, Provider] | None = None,
    store: Store | None = None,
) -> web.Application:
    """Build a worker. `providers` adds ready-made providers (tests, embedding)."""
    hide_server_version()
    app = web.Application(
        client_max_size=settings.http.client_max_size,
        handler_args={"logger": RequestErrors()},
    )
    store = store or create_store(settings)
    manager = None
    if store.shared and settings.store.redis_url:
        # Carries session control to every worker's room members (session_deleted,
        # closing the room); stream tokens do not go through it (see tailer.py).
        url, redis_options = manager_options(settings.store)
        manager = WatchedRedisManager(
            url, channel=f"{settings.store.key_prefix}:socketio", redis_options=redis_options
        )
    sio = ChatsockServer(
        async_mode="aiohttp",
        json=jsoncodec,
        client_manager=manager,
        **socketio_cors(settings),
        max_http_buffer_size=settings.http.client_max_size,
        send_limits=SendLimits.from_settings(settings),
    )
    sio.attach(app)
    registry = build_registry(settings, providers)
    for name, reason in registry.left_out.items():
        log.warning("provider %s is configured but not in the chain: %s", name, reason)
    worker_id = _worker_id(settings)
    name_worker(worker_id)
    bus = SignalBus(store, worker_id)
    fanout = Fanout(sio, store)
    runner = StreamRunner(settings, store, registry, fanout, worker_id=worker_id, bus=bus)
    sessions = SessionService(
        store, runner, fanout, stop_on_disconnect=settings.stream.stop_on_disconnect, bus=bus
    )
    quotas = Quotas(store, settings.limits)
    gate = Gate(
        Authenticator(settings.auth),
        quotas,
        ClientPolicy(settings, registry),
        settings.server.trusted_proxies,
    )
    namespace = ChatNamespace(runner, sessions, gate, budget=quotas.event_budget)
    sio.register_namespace(namespace)
    sessions.on_deleted = _session_closer(sio)
    if manager is not None:  # a delete's stream ends reach the tails on every worker
        share = manager.publish_ends
        sessions.share_ends = lambda ends: share(encode_ends(ends))
        manager.on_ends = lambda ends: sessions.tailers.hand_over(decode_ends(ends))
    metrics = Metrics(runner, sessions)
    sio.on_not_reading(metrics.slow_clients_dropped.labels("socketio").inc)
    runner.hooks = metrics.stream_hooks()
    if settings.limits.daily_output_tokens:
        runner.charge = quotas.charge
    loops = BackgroundLoops(on_restart=metrics.loop_restarted)

    app[SETTINGS] = settings
    app[STORE] = store
    app[REGISTRY] = registry
    app[SIO] = sio
    app[FANOUT] = fanout
    app[RUNNER] = runner
    app[SESSIONS] = sessions
    app[BUS] = bus
    app[METRICS] = metrics
    app[LOOPS] = loops
    app[GATE] = gate
    app[NAMESPACE] = namespace
    if manager is not None:
        app[MANAGER] = manager

    drain = Drain(
        runner, sessions, sio, shared=store.shared, timeout_s=settings.server.drain_timeout_s
    )
    app[DRAIN] = drain

    add_page_routes(app, settings.static_dir)
    install_guards(app, settings)
    app.middlewares.append(drain.middleware)
    aisdk = AiSdkChat(settings, store, runner, fanout, sessions, gate, metrics)
    choices = ProvidersApi(gate.policy, registry)
    HttpApi(
        settings,
        store,
        runner,
        fanout,
        sessions,
        metrics,
        listeners=_listeners(bus, manager),
        loops=loops,
        gate=gate,
        draining=lambda: drain.reason,
    ).add_routes(app, lambda r: [*aisdk.add_routes(r), *choices.add_routes(r)])
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_shutdown_streams)
    return app


def _session_closer(sio: socketio.AsyncServer) -> Callable[[str], Awaitable[None]]:
    """After a delete: tell the session's room, then close it, on every worker.

    Both go through the client manager (the Redis manager with several
    workers), so members connected to any worker hear it and leave the room;
    a later stream in a session of the same id does not reach them.
    """

    async def deleted(session_id: str) -> None:
        room = protocol.session_room(session_id)
        await sio.emit(protocol.SESSION_DELETED, protocol.session_deleted(session_id), room=room)
        await sio.close_room(room)
        await sio.close_room(protocol.reasoning_room(session_id))

    return deleted


ListenerCheck = Callable[[], tuple[str | None, dict[str, float | None]]]


def _listeners(bus: SignalBus, manager: WatchedRedisManager | None) -> ListenerCheck:
    """A readiness check: why a pub/sub listener is not hearing (or None), and how long
    ago each last heard a message."""

    def check() -> tuple[str | None, dict[str, float | None]]:
        heard: dict[str, float | None] = {}
        problem = None
        if bus.active:
            deaf = heard["signals"] = bus.deaf_for()
            if not bus.connected.is_set() or (deaf is not None and deaf > LISTENER_DEAF_S):
                problem = "the cross-worker signal listener is not hearing; it reconnects"
        if manager is not None:
            deaf = heard["socketio"] = manager.deaf_for()
            if problem is None and deaf is not None and deaf > LISTENER_DEAF_S:
                problem = "the Socket.IO Redis listener is not hearing; it is being restarted"
        return problem, heard

    return check


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    await store.open()
    sessions, runner, bus, loops = app[SESSIONS], app[RUNNER], app[BUS], app[LOOPS]
    loops.start("signals", lambda: bus.run(sessions.on_started, sessions.on_stop))
    loops.start("lease upkeep", runner.maintain)
    loops.start("presence upkeep", sessions.upkeep)
    loops.start("connection holds", app[GATE].keep_holds)
    if MANAGER in app:
        loops.start("socket.io watchdog", app[MANAGER].watch)
    log.info(
        "chatsock worker %s ready (store: %s, providers: %s)",
        app[RUNNER].worker_id,
        type(store).__name__,
        ", ".join(app[REGISTRY].chain),
    )
    yield
    await loops.close()
    await app[NAMESPACE].clients.close()
    await app[GATE].aclose()
    await sessions.tailers.close()
    if MANAGER in app:
        await app[MANAGER].aclose()
    await app[REGISTRY].aclose()
    await store.close()


async def _shutdown_streams(app: web.Application) -> None:
    # on_shutdown runs while client connections are still open, so clients
    # receive chat_stream_error(server_shutdown) before they are closed.
    await app[RUNNER].shutdown()
    sio = app[SIO]
    # An Engine.IO-level close, so socket.io-client reconnects (to another
    # worker). wait=False: a socket whose peer already vanished would never
    # drain its queue, and `eio.disconnect()` would wait on it forever.
    for eio_socket in list(sio.eio.sockets.values()):
        await eio_socket.close(wait=False, reason=sio.eio.reason.SERVER_DISCONNECT)
    await sio.shutdown()
