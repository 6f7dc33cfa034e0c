"""Serving one worker: listen, run until SIGTERM or SIGINT, drain, shut down, exit.

The exit is bounded: from the first signal, the process ends within
`drain_timeout_s + shutdown_grace_s + 1 s`, whatever its clients do. The
drain gets `drain_timeout_s`; the shutdown proper (ending the streams still
running, closing connections, closing the store) gets the rest. Nothing in
either awaits a peer without a deadline, and a watchdog thread ends the
process if the event loop itself is stuck past the bound. A second signal
skips the rest of the drain.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time

from aiohttp import web

from chatsock.app import DRAIN, SETTINGS

log = logging.getLogger(__name__)

# Of the final second of the bound: what the process needs to exit after the
# loop stops (closing the loop, the interpreter's own teardown).
EXIT_MARGIN_S = 0.5


async def serve(app: web.Application, listener: socket.socket) -> None:
    """Serve `app` on the bound `listener` until a signal, then drain and shut down."""
    settings = app[SETTINGS].server
    loop = asyncio.get_running_loop()
    signalled, hurry = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        (hurry if signalled.is_set() else signalled).set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    # The worker's shutdown proper bounds each connection's handler by this
    # (then cancels it); our own deadline below bounds the whole.
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5, keepalive_timeout=75.0)
    await runner.setup()  # opens the store: StoreUnavailable leaves from here
    deadline = None
    try:
        await web.SockSite(runner, listener, backlog=settings.backlog).start()
        host, port = listener.getsockname()[:2]
        log.info("listening on http://%s:%s", _url_host(host), port)
        await signalled.wait()
        bound = settings.drain_timeout_s + settings.shutdown_grace_s + 1.0
        deadline = loop.time() + bound - EXIT_MARGIN_S
        _watchdog(bound)
        drained = asyncio.ensure_future(app[DRAIN].run())
        hurried = asyncio.ensure_future(hurry.wait())
        await asyncio.wait(
            {drained, hurried},
            timeout=settings.drain_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        for task in (drained, hurried):
            task.cancel()
        await asyncio.gather(drained, hurried, return_exceptions=True)
    finally:
        left = settings.shutdown_grace_s + 1 if deadline is None else deadline - loop.time()
        try:
            async with asyncio.timeout(max(left, 0.1)):
                await runner.cleanup()
        except TimeoutError:
            log.error("shutdown cut short at its bound; what the store still owes is left to the "
                      "other workers (stream leases)")  # fmt: skip


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _watchdog(bound: float) -> None:
    """End the process at `bound` seconds from now even if the event loop is stuck."""
    started = time.monotonic()

    def expire() -> None:
        elapsed = time.monotonic() - started
        log.critical("still running %.1fs after the signal: exiting now", elapsed)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(bound, expire)
    timer.daemon = True
    timer.start()
