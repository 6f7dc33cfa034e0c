"""The `anthropic` provider: Claude through the official SDK, the body parsed on a fast path.

As in openai.py, the SDK builds, authenticates and retries the request and
maps HTTP errors; the named events of the body are parsed here (sse.py +
orjson) instead of through the SDK's typed events (56-150 µs per token).

Events used: `message_start` (usage.input_tokens), `content_block_delta`
with a `text_delta`, `message_delta` (stop_reason, usage.output_tokens),
`message_stop`; `ping` and the block start/stop events are ignored, and
`event: error` after HTTP 200 is a mid-stream failure.

Stop reasons map into base.FINISH_REASONS:

    end_turn, stop_sequence, pause_turn -> stop
    max_tokens, model_context_window_exceeded -> length
    refusal -> content_filter
    tool_use -> tool_calls
    anything else, or none -> stop
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

import anthropic
import orjson

from chatsock.providers.base import ChatRequest, Delta, Usage
from chatsock.providers.errors import MALFORMED, UpstreamEventError, upstream_message
from chatsock.providers.streaming import SSEStreamProvider

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_MODEL = "claude-sonnet-5-5"
# Anthropic requires max_tokens on every request.
DEFAULT_MAX_TOKENS = 1024
# In-stream error types worth retrying later.
RETRYABLE_ERROR_TYPES = frozenset({"overloaded_error", "api_error", "rate_limit_error"})

STOP_REASON_MAP = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
    "tool_use": "tool_calls",
}


def map_stop_reason(reason: str | None) -> str:
    """An Anthropic stop_reason in chatsock's vocabulary (see module doc)."""
    return STOP_REASON_MAP.get(reason or "end_turn", "stop")


class _EventReader:
    """The state of one Anthropic stream: turns each named event into text."""

    __slots__ = ("finished", "input_tokens", "output_tokens", "stop_reason")

    def __init__(self) -> None:
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.stop_reason: str | None = None
        self.finished = False

    def read(self, event: str, data: str) -> str | None:
        """Text to yield for one event, or None; UpstreamEventError for errors."""
        try:
            if event == "content_block_delta":
                delta = orjson.loads(data)["delta"]
                if delta.get("type") == "text_delta":
                    return delta.get("text") or None
                return None
            if event == "message_start":
                usage = orjson.loads(data)["message"].get("usage") or {}
                self.input_tokens = usage.get("input_tokens")
                self.output_tokens = usage.get("output_tokens")
            elif event == "message_delta":
                payload = orjson.loads(data)
                reason = (payload.get("delta") or {}).get("stop_reason")
                self.stop_reason = reason or self.stop_reason
                output = (payload.get("usage") or {}).get("output_tokens")
                if output is not None:
                    self.output_tokens = output
            elif event == "message_stop":
                self.finished = True
            elif event == "error":
                body = orjson.loads(data)
                kind = str((body.get("error") or {}).get("type") or "")
                raise UpstreamEventError(
                    f"error event: {upstream_message(body)}",
                    retryable=kind in RETRYABLE_ERROR_TYPES,
                )
        except MALFORMED as exc:
            raise UpstreamEventError(f"malformed {event} event: {exc}", retryable=True) from exc
        return None

    def final(self) -> Delta | None:
        if not self.finished and self.stop_reason is None:
            return None
        return Delta(
            finish_reason=map_stop_reason(self.stop_reason),
            usage=Usage(self.input_tokens, self.output_tokens),
        )


class AnthropicProvider(SSEStreamProvider):
    """Streams Claude messages from Anthropic's API (or a compatible `base_url`)."""

    kind = "anthropic"
    status_error = anthropic.APIStatusError
    connection_error = anthropic.APIConnectionError
    cut_short = "ended before message_stop"
    default_base_url = DEFAULT_BASE_URL

    def __init__(
        self,
        name: str = "anthropic",
        *,
        default_model: str = DEFAULT_MODEL,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        **options: Any,
    ) -> None:
        """`options`: base_url, api_key, the timeouts, max_retries, headers
        (see `SSEStreamProvider`)."""
        super().__init__(name, default_model=default_model, **options)
        self.default_max_tokens = default_max_tokens
        self._client = anthropic.AsyncAnthropic(**self._client_options)

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body for `request` (without `stream`, which stream() adds).

        `temperature` is not sent: the Messages API of anthropic SDK 2.x has no
        such parameter, and the SDK rejects it.
        """
        body: dict[str, Any] = {
            "model": self.model_for(request),
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens or self.default_max_tokens,
        }
        if request.system_prompt:
            body["system"] = request.system_prompt
        return body

    def _open(self, body: dict[str, Any]) -> AbstractAsyncContextManager[Any]:
        create = self._client.messages.with_streaming_response.create
        return create(stream=True, **body)

    def _reader(self) -> _EventReader:
        return _EventReader()

    async def aclose(self) -> None:
        await self._client.close()
