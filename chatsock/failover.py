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
from chatsock.lifecycle import EndReason
from chatsock.providers.base import ProviderError, ProviderTimeout
from chatsock.stream import ActiveStream, StreamHooks

log = logging.getLogger(__name__)

# The idle timeout may fire up to this much later than `idle_timeout` after
# the last delta.
IDLE_SLACK_S = 0.5


async def read_chain(stream: ActiveStream, max_chars: int, hooks: StreamHooks) -> None:
    """Iterate the provider chain; fail over while nothing has been received.

    The outcome is decided here, synchronously, the moment it is known: the
    provider finishing ends the stream as COMPLETE, a failure as FAILED. A
    stop that comes later finds the end decided and changes nothing."""
    life = stream.life
    try:
        await _read(stream, max_chars, hooks)
    except (ProviderError, ChatsockError) as exc:
        life.end(EndReason.FAILED, exc)
        raise
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # A bug in a provider: logged once here, and the stream ends as internal.
        log.error("stream %s: provider iteration crashed", stream.record.stream_id, exc_info=exc)
        life.end(EndReason.INTERNAL, ChatsockError("internal", "internal error while streaming"))
    else:
        life.end(EndReason.COMPLETE)
    finally:
        stream.wake()


async def _read(stream: ActiveStream, max_chars: int, hooks: StreamHooks) -> None:
    reasons: list[str] = []
    loop = asyncio.get_running_loop()
    for provider in stream.chain:
        alive = False  # any delta arrived from this provider
        stream.provider = provider.name
        stream.model = provider.model_for(stream.request)
        try:
            async with asyncio.timeout(provider.first_token_timeout) as deadline:
                async with aclosing(provider.stream(stream.request)) as deltas:
                    moved = -1e9
                    async for delta in deltas:
                        # Any delta, text or not (reasoning, tool calls), shows the
                        # model is alive: the idle timeout applies from here. Moved
                        # at most every IDLE_SLACK_S (a timer re-armed per delta is
                        # a measurable share of the per-token CPU).
                        now = loop.time()
                        if now - moved >= IDLE_SLACK_S:
                            deadline.reschedule(now + provider.idle_timeout + IDLE_SLACK_S)
                            moved = now
                        alive = True
                        if delta.text:
                            stream.take(delta.text, max_chars, hooks)
                        elif delta.reasoning:
                            stream.take_reasoning(delta.reasoning, max_chars, hooks)
                        if stream.buffered >= max_chars:
                            # Backpressure: let the pump take a full buffer.
                            stream.drained = loop.create_future()
                            await stream.drained
                        if delta.finish_reason is not None:
                            stream.finish_reason = delta.finish_reason
                        if delta.usage is not None:
                            stream.usage = delta.usage
                        if delta.signed:
                            stream.signed = delta.signed
            return
        except TimeoutError:
            which = "idle" if alive else "first token"
            limit = provider.idle_timeout if alive else provider.first_token_timeout
            error: ProviderError = ProviderTimeout(
                f"{provider.name}: no {which} within {limit:g}s",
                provider=provider.name,
                first_token=stream.count == 0,  # no text yet: the next may answer
            )
        except ProviderError as exc:
            error = exc
        # Reasoning alone does not hold the chain: the next provider's reasoning
        # follows what was shown, and its answer is the reply.
        if stream.count > 0 or not error.fails_over:
            raise error
        reasons.append(f"{provider.name}: {error.message}")
        log.warning(
            "provider %s failed before the first token, failing over: %s",
            provider.name,
            error.detail,
        )
        if hooks.on_failover:
            hooks.on_failover(provider.name)
    raise ChatsockError(
        "provider_unavailable",
        "every provider failed: " + "; ".join(reasons),
        retryable=bool(error.retryable),
    )
