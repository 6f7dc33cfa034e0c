"""The `anthropic` provider: Claude through the official SDK, the body parsed on a fast path.

As in openai.py, the SDK builds, authenticates and retries the request and
maps HTTP errors; the named events of the body are parsed here (sse.py +
orjson) instead of through the SDK's typed events (56-150 µs per token).

Events used: `message_start` (usage.input_tokens), `content_block_delta`
with a `text_delta`, `message_delta` (stop_reason, usage.output_tokens),
`message_stop`; `event: error` after HTTP 200 is a stream failure.

Extended thinking (a request's `thinking_budget`): a `thinking` block's
`thinking_delta`s are reasoning; its `signature_delta` and any
`redacted_thinking` block are kept whole and returned with the final delta
(`Delta.signed`), since the API requires them back, unchanged, in the
assistant turn of the next request (`request_body` sends them). Tool-use
blocks and their deltas are activity (the model is alive) with no text;
`ping` is not. Unsupported and unknown types are dropped and logged once per
stream.

Stop reasons map into base.FINISH_REASONS:

    end_turn, stop_sequence, pause_turn -> stop
    max_tokens, model_context_window_exceeded -> length
    refusal -> content_filter
    tool_use -> tool_calls
    anything else, or none -> stop
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from logging import WARNING
from typing import Any

import anthropic
import orjson

from chatsock.providers.base import ChatMessage, ChatRequest, Delta, Signed, Usage
from chatsock.providers.errors import MALFORMED, UpstreamEventError, upstream_message
from chatsock.providers.streaming import IgnoredParts, SSEStreamProvider, type_name

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_MODEL = "claude-sonnet-5-5"
# Anthropic requires max_tokens on every request.
DEFAULT_MAX_TOKENS = 1024
# The smallest thinking budget the API takes; max_tokens must exceed the budget.
MIN_THINKING_BUDGET = 1024
# In-stream error types worth retrying later.
RETRYABLE_ERROR_TYPES = frozenset({"overloaded_error", "api_error", "rate_limit_error"})

# Block and delta types that show the model at work on something other than
# text: reasoning (dropped silently) and parts chatsock does not stream (logged).
THINKING_BLOCKS = frozenset({"thinking", "redacted_thinking"})
UNSUPPORTED_BLOCKS = frozenset({"tool_use", "server_tool_use"})
THINKING_DELTAS = frozenset({"thinking_delta", "signature_delta"})
UNSUPPORTED_DELTAS = frozenset({"input_json_delta", "citations_delta"})
# Events with nothing to read. `ping` is not activity: it proves only that the
# connection is up, not that the model is working.
QUIET_EVENTS = frozenset({"ping", "content_block_stop"})
NON_TEXT = "non-text text_delta.text"

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
    """The state of one Anthropic stream: turns each named event into text or activity."""

    __slots__ = (
        "finished",
        "ignored",
        "input_tokens",
        "output_tokens",
        "signed",
        "stop_reason",
        "thought",
    )

    def __init__(self, provider: str) -> None:
        self.thought = ""
        # The reply's thinking and redacted_thinking blocks, by content index.
        self.signed: dict[int, Signed] = {}
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.stop_reason: str | None = None
        self.finished = False
        self.ignored = IgnoredParts(provider)

    def read(self, event: str, data: str) -> str | None:
        """Text, "" for activity, or None for one event; UpstreamEventError for errors."""
        try:
            if event == "content_block_delta":
                payload = orjson.loads(data)
                delta = payload["delta"]
                kind = delta.get("type")
                if kind == "text_delta":
                    text = delta.get("text")
                    if isinstance(text, str):
                        return text or None
                    self.ignored.note(NON_TEXT, f"of type {type(text).__name__}", level=WARNING)
                    return None
                if type(kind) is str and kind in THINKING_DELTAS:
                    return self._thinking(payload.get("index"), kind, delta)
                return self._activity("delta", kind, THINKING_DELTAS, UNSUPPORTED_DELTAS)
            if event == "content_block_start":
                payload = orjson.loads(data)
                block = payload.get("content_block")
                kind = block.get("type") if isinstance(block, dict) else None
                if kind == "text":
                    return None
                if (
                    type(kind) is str
                    and kind in THINKING_BLOCKS
                    and type(payload.get("index")) is int
                ):
                    assert isinstance(block, dict)
                    return self._thinking_block(payload["index"], kind, block)
                return self._activity("content block", kind, THINKING_BLOCKS, UNSUPPORTED_BLOCKS)
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
            elif event not in QUIET_EVENTS:
                self.ignored.note(f"event {type_name(event)}")
        except MALFORMED as exc:
            raise UpstreamEventError(f"malformed {event} event: {exc}", retryable=True) from exc
        return None

    def _thinking_block(self, index: int, kind: str, block: dict[str, Any]) -> str:
        """A thinking or redacted_thinking block starts: keep it, as the API wants it back."""
        if kind == "redacted_thinking":
            self.signed[index] = {"type": kind, "data": block.get("data")}
            return ""
        start = block.get("thinking")
        self.signed[index] = {
            "type": kind,
            "thinking": start if isinstance(start, str) else "",
            "signature": block.get("signature") or "",
        }
        if isinstance(start, str) and start:
            self.thought += start
        return ""

    def _thinking(self, index: object, kind: str, delta: dict[str, Any]) -> str:
        """A thinking_delta (reasoning to stream) or a signature_delta (kept)."""
        block = self.signed.get(index) if isinstance(index, int) else None
        if kind == "signature_delta":
            signature = delta.get("signature")
            if block is not None and isinstance(signature, str):
                block["signature"] = block.get("signature", "") + signature
            return ""
        thought = delta.get("thinking")
        if not isinstance(thought, str):
            self.ignored.note(NON_TEXT, f"thinking of type {type(thought).__name__}", level=WARNING)
            return ""
        self.thought += thought
        if block is not None and block.get("type") == "thinking":
            block["thinking"] += thought
        return ""

    def _activity(
        self, what: str, kind: object, thinking: frozenset[str], unsupported: frozenset[str]
    ) -> str | None:
        """An empty string (activity) for a type that shows the model at work, else None."""
        if isinstance(kind, str):
            if kind in thinking:
                return ""  # Reasoning: not forwarded (yet), not worth a log line.
            if kind in unsupported:
                self.ignored.note(f"{what} {kind}")
                return ""
        self.ignored.note(f"{what} type {type_name(kind)}")
        return None

    def final(self) -> Delta | None:
        if not self.finished and self.stop_reason is None:
            return None
        return Delta(
            finish_reason=map_stop_reason(self.stop_reason),
            usage=Usage(self.input_tokens, self.output_tokens),
            signed=tuple(self.signed[i] for i in sorted(self.signed)),
        )


def _turn(message: ChatMessage) -> dict[str, Any]:
    """One message of the request; an assistant turn with signed thinking sends the
    blocks first, unchanged, as the API requires when thinking is on."""
    if not message.signed:
        return {"role": message.role, "content": message.content}
    text = [{"type": "text", "text": message.content}] if message.content else []
    return {"role": message.role, "content": [*message.signed, *text]}


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
        max_tokens = request.max_tokens or self.default_max_tokens
        body: dict[str, Any] = {
            "model": self.model_for(request),
            "messages": [_turn(m) for m in request.messages],
            "max_tokens": max_tokens,
        }
        budget = request.thinking_budget or self.reasoning.thinking_budget
        if budget:
            budget = max(budget, MIN_THINKING_BUDGET)
            body["thinking"] = {"type": "enabled", "budget_tokens": budget}
            # The budget is part of max_tokens: the reply's text keeps what was asked.
            body["max_tokens"] = budget + max_tokens
        if request.system_prompt:
            body["system"] = request.system_prompt
        return body

    def _open(self, body: dict[str, Any]) -> AbstractAsyncContextManager[Any]:
        create = self._client.messages.with_streaming_response.create
        return create(stream=True, **body)

    def _reader(self) -> _EventReader:
        return _EventReader(self.name)

    async def aclose(self) -> None:
        await self._client.close()
