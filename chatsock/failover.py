"""Reading a stream's provider chain: timeouts, backpressure and failover.

A provider that fails before any text arrived (connect error, HTTP 401/403/
404/408/409/429/5xx, first-token timeout) is skipped for the next one,
silently but logged. After text arrived there is no retry and no switch:
showing the user the same text twice is worse than an honest error.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing

from chatsock.errors import ChatsockError
from chatsock.providers.base import ProviderError, ProviderTimeout
from chatsock.stream import ActiveStream, StreamHooks

log = logging.getLogger(__name__)


async def read_chain(stream: ActiveStream, max_chars: int, hooks: StreamHooks) -> None:
    """Iterate the provider chain; fail over while nothing has been received."""
    reasons: list[str] = []
    loop = asyncio.get_running_loop()
    try:
        for provider in stream.chain:
            stream.provider = provider.name
            stream.model = provider.model_for(stream.request)
            try:
                async with asyncio.timeout(provider.first_token_timeout) as deadline:
                    async with aclosing(provider.stream(stream.request)) as deltas:
                        async for delta in deltas:
                            if delta.text:
                                stream.take(delta.text, max_chars, hooks)
                                deadline.reschedule(loop.time() + provider.idle_timeout)
                                if stream.buffered >= max_chars:
                                    # Backpressure: let the pump take a full buffer.
                                    stream.drained = loop.create_future()
                                    await stream.drained
                            if delta.finish_reason is not None:
                                stream.finish_reason = delta.finish_reason
                            if delta.usage is not None:
                                stream.usage = delta.usage
                return
            except TimeoutError:
                first = stream.count == 0
                which = "first token" if first else "idle"
                limit = provider.first_token_timeout if first else provider.idle_timeout
                error: ProviderError = ProviderTimeout(
                    f"{provider.name}: no {which} within {limit:g}s",
                    provider=provider.name,
                    first_token=first,
                )
            except ProviderError as exc:
                error = exc
            if stream.count > 0 or not error.fails_over:
                raise error
            reasons.append(f"{provider.name}: {error.message}")
            log.warning(
                "provider %s failed before the first token, failing over: %s",
                provider.name,
                error.message,
            )
            if hooks.on_failover:
                hooks.on_failover(provider.name)
        raise ChatsockError(
            "provider_unavailable",
            "every provider failed: " + "; ".join(reasons),
            retryable=bool(error.retryable),
        )
    finally:
        stream.wake(urgent=True)
