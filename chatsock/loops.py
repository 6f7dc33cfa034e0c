"""The worker's background loops, supervised: none dies silently.

Each loop is started from a factory, so it can be started again. A loop that
raises is logged with its traceback and restarted after a backoff (0.1 s,
doubling up to `LOOP_RESTART_MAX_S`); a loop that returns is done (there may
be nothing for it to do, as with the memory store). A loop that keeps
failing shows up in `status()`, and `/readyz` reports it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from chatsock.timing import (
    LOOP_FAILING_AFTER,
    LOOP_FAILING_WINDOW_S,
    LOOP_FIRST_RESTART_S,
    LOOP_RESTART_MAX_S,
)

log = logging.getLogger(__name__)


LoopFactory = Callable[[], Awaitable[None]]
LoopState = Literal["running", "restarting", "done", "failing"]


@dataclass
class LoopStatus:
    """What `/readyz` says about one loop."""

    state: LoopState
    failures: int
    last_error: str | None


@dataclass(eq=False)
class _Loop:
    name: str
    factory: LoopFactory
    state: Literal["running", "restarting", "done"] = "running"
    failures: int = 0
    last_error: str | None = None
    recent: deque[float] = field(default_factory=deque)  # monotonic times of failures
    task: asyncio.Task[None] | None = None

    def failing(self, now: float) -> bool:
        while self.recent and now - self.recent[0] > LOOP_FAILING_WINDOW_S:
            self.recent.popleft()
        return len(self.recent) >= LOOP_FAILING_AFTER


class BackgroundLoops:
    """Starts named loops, restarts the ones that fail, and stops them all on `close()`."""

    def __init__(self, on_restart: Callable[[str], None] | None = None) -> None:
        self._loops: dict[str, _Loop] = {}
        self._on_restart = on_restart

    def start(self, name: str, factory: LoopFactory) -> None:
        """Run `factory()` as the loop `name` until it returns or `close()`."""
        if name in self._loops:
            raise ValueError(f"a background loop named {name!r} is already running")
        loop = _Loop(name, factory)
        loop.task = asyncio.get_running_loop().create_task(self._supervise(loop), name=name)
        self._loops[name] = loop

    def status(self) -> dict[str, LoopStatus]:
        now = time.monotonic()
        return {
            name: LoopStatus(
                "failing" if loop.failing(now) else loop.state, loop.failures, loop.last_error
            )
            for name, loop in self._loops.items()
        }

    def failing(self) -> list[str]:
        """Names of the loops that failed LOOP_FAILING_AFTER times within LOOP_FAILING_WINDOW_S."""
        return [name for name, status in self.status().items() if status.state == "failing"]

    async def close(self) -> None:
        """Cancel every loop and wait until each has finished."""
        tasks = [loop.task for loop in self._loops.values() if loop.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _supervise(self, loop: _Loop) -> None:
        delay = LOOP_FIRST_RESTART_S
        while True:
            loop.state = "running"
            began = time.monotonic()
            try:
                await loop.factory()
            except Exception as exc:  # CancelledError is not an Exception: close() ends us
                now = time.monotonic()
                loop.failures += 1
                loop.recent.append(now)
                loop.last_error = f"{type(exc).__name__}: {exc}"
                if now - began > LOOP_RESTART_MAX_S:
                    delay = LOOP_FIRST_RESTART_S  # it ran well for a while: a fresh failure
                log.error(
                    "background loop %r failed (failure #%d); restarting it in %.1fs",
                    loop.name,
                    loop.failures,
                    delay,
                    exc_info=exc,
                )
                loop.state = "restarting"
                await asyncio.sleep(delay)
                delay = min(delay * 2, LOOP_RESTART_MAX_S)
                if self._on_restart is not None:
                    self._on_restart(loop.name)
                continue
            loop.state = "done"
            return
