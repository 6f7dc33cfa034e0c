"""What the provider tests share: building providers against a fake, reading streams."""

from __future__ import annotations

import logging
from typing import Any, Generic, TypeVar

from chatsock.providers.base import ChatMessage, ChatRequest, Delta, Provider

P = TypeVar("P", bound=Provider)

HELLO = ChatRequest([ChatMessage("user", "hi")])


class ProviderMaker(Generic[P]):
    """Builds providers of one class pointed at a fake upstream; closes them all."""

    def __init__(self, cls: type[P], name: str, defaults: dict[str, Any]) -> None:
        self.cls = cls
        self.name = name
        self.defaults = defaults
        self.made: list[P] = []

    def __call__(self, **options: Any) -> P:
        provider = self.cls(self.name, **{**self.defaults, **options})
        self.made.append(provider)
        return provider

    async def aclose(self) -> None:
        for provider in self.made:
            await provider.aclose()


async def collect(provider: Provider, request: ChatRequest = HELLO) -> list[Delta]:
    return [delta async for delta in provider.stream(request)]


async def drain_into(received: list[str], provider: Provider) -> None:
    """Read the stream into `received` until it ends or raises."""
    async for delta in provider.stream(HELLO):
        received.append(delta.text)


def text_of(deltas: list[Delta]) -> str:
    return "".join(delta.text for delta in deltas)


def is_activity(delta: Delta) -> bool:
    """A bare delta: the model is alive, with no text, finish reason or usage."""
    return delta == Delta()


def ignored_notes(records: list[logging.LogRecord]) -> list[tuple[int, str]]:
    """(level, message) of each "ignored ..." line the providers logged."""
    return [
        (record.levelno, record.getMessage())
        for record in records
        if record.name == "chatsock.providers.streaming" and "ignored" in record.getMessage()
    ]
