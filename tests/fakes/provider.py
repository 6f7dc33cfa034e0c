"""A fake provider you enqueue scripted replies into (a fake, not a mock)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from chatsock.providers.base import ChatRequest, Delta, Provider, Usage


@dataclass
class Script:
    """One scripted reply: steps are text pieces, raw deltas (as a misbehaving provider
    might send them), gates to wait on, sleeps or an error."""

    steps: list[object] = field(default_factory=list)
    finish_reason: str = "stop"
    usage: Usage | None = None

    def text(self, *pieces: str) -> Script:
        self.steps.extend(pieces)
        return self

    def gate(self) -> asyncio.Event:
        event = asyncio.Event()
        self.steps.append(event)
        return event

    def sleep(self, seconds: float) -> Script:
        self.steps.append(seconds)
        return self

    def raw(self, delta: Delta) -> Script:
        self.steps.append(delta)
        return self

    def fail(self, error: Exception) -> Script:
        self.steps.append(error)
        return self


class ScriptedProvider(Provider):
    """Replies with enqueued `Script`s in order; records every request it got."""

    kind = "scripted"

    def __init__(self, name: str = "fake", *, model: str = "fake-1", **timeouts: float) -> None:
        super().__init__(name, default_model=model, **timeouts)
        self.scripts: deque[Script] = deque()
        self.requests: list[ChatRequest] = []
        self.closed: list[bool] = []
        self.started = asyncio.Event()

    def enqueue(
        self, *pieces: str, finish_reason: str = "stop", usage: Usage | None = None
    ) -> Script:
        script = Script(list(pieces), finish_reason, usage)
        self.scripts.append(script)
        return script

    async def stream(self, request: ChatRequest) -> AsyncGenerator[Delta, None]:
        self.requests.append(request)
        script = self.scripts.popleft() if self.scripts else Script(["ok"])
        self.started.set()
        index = len(self.closed)
        self.closed.append(False)
        try:
            for step in script.steps:
                if isinstance(step, str):
                    yield Delta(step)
                elif isinstance(step, Delta):
                    yield step
                elif isinstance(step, asyncio.Event):
                    await step.wait()
                elif isinstance(step, float | int):
                    await asyncio.sleep(step)
                elif isinstance(step, Exception):
                    raise step
            yield Delta(finish_reason=script.finish_reason, usage=script.usage)
        finally:
            self.closed[index] = True
