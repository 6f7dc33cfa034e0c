"""The `openai` provider: OpenAI and every OpenAI-compatible server (Ollama, vLLM, ...).

The official SDK builds the request, authenticates, retries the initial
connection (connect errors, 408/409/429/5xx, `max_retries` times) and turns
HTTP errors into exception types. The body is then read raw and parsed here
(sse.py + orjson): iterating the SDK's typed chunks costs ~200 µs per token,
this path ~15 µs (shared/FACTS.md, benchmarks/providers.py).

Finish reasons map into base.FINISH_REASONS:

    stop                      -> stop
    length                    -> length
    content_filter            -> content_filter
    tool_calls, function_call -> tool_calls
    abort, error              -> error    (vLLM, some proxies)
    anything else, or none    -> stop     (the server ended the stream normally)
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import urlsplit

import openai
import orjson

from chatsock.providers.base import ChatRequest, Delta, Usage
from chatsock.providers.errors import MALFORMED, UpstreamEventError, upstream_message
from chatsock.providers.streaming import SSEStreamProvider

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"

FINISH_REASON_MAP = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "abort": "error",
    "error": "error",
}


def map_finish_reason(reason: str | None) -> str:
    """An OpenAI-compatible finish_reason in chatsock's vocabulary (see module doc)."""
    return FINISH_REASON_MAP.get(reason or "stop", "stop")


class _ChunkReader:
    """The state of one OpenAI stream: turns each `data:` payload into text."""

    __slots__ = ("finish_reason", "finished", "usage")

    def __init__(self) -> None:
        self.finished = False
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    def read(self, event: str, data: str) -> str | None:
        """Text to yield for one event, or None; UpstreamEventError for errors."""
        if data == "[DONE]":
            self.finished = True
            return None
        try:
            chunk = orjson.loads(data)
            choices = chunk.get("choices")
            text = None
            if choices:
                choice = choices[0]
                delta = choice.get("delta")
                if delta:
                    text = delta.get("content") or None
                reason = choice.get("finish_reason")
                if reason:
                    self.finish_reason = reason
            usage = chunk.get("usage")
            if usage:
                self.usage = Usage(usage.get("prompt_tokens"), usage.get("completion_tokens"))
            error = chunk.get("error")
        except MALFORMED as exc:
            raise UpstreamEventError(f"malformed chunk: {exc}", retryable=True) from exc
        if error:
            # vLLM, proxies and OpenAI itself can report a failure inside the stream.
            detail = upstream_message({"error": error})
            raise UpstreamEventError(f"error event: {detail}", retryable=True)
        return text

    def final(self) -> Delta | None:
        if not self.finished and self.finish_reason is None:
            return None
        return Delta(finish_reason=map_finish_reason(self.finish_reason), usage=self.usage)


class OpenAIProvider(SSEStreamProvider):
    """Streams chat completions from OpenAI or an OpenAI-compatible `base_url`."""

    kind = "openai"
    status_error = openai.APIStatusError
    connection_error = openai.APIConnectionError
    cut_short = "ended without a finish_reason or [DONE]"
    default_base_url = DEFAULT_BASE_URL

    def __init__(
        self,
        name: str = "openai",
        *,
        default_model: str = DEFAULT_MODEL,
        **options: Any,
    ) -> None:
        """`options`: base_url, api_key, the timeouts, max_retries, headers
        (see `SSEStreamProvider`)."""
        super().__init__(name, default_model=default_model, **options)
        # OpenAI's own API wants max_completion_tokens (reasoning models reject
        # max_tokens); compatible servers mostly know only max_tokens.
        official = urlsplit(self.base_url).hostname == "api.openai.com"
        self._max_tokens_field = "max_completion_tokens" if official else "max_tokens"
        self._client = openai.AsyncOpenAI(**self._client_options)

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body for `request` (without `stream`, which stream() adds)."""
        messages: list[dict[str, str]] = []
        if request.system_prompt:
            messages.append({"role": "system", "content": request.system_prompt})
        messages.extend({"role": m.role, "content": m.content} for m in request.messages)
        body: dict[str, Any] = {
            "model": self.model_for(request),
            "messages": messages,
            "stream_options": {"include_usage": True},
        }
        if request.max_tokens is not None:
            body[self._max_tokens_field] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        return body

    def _open(self, body: dict[str, Any]) -> AbstractAsyncContextManager[Any]:
        create = self._client.chat.completions.with_streaming_response.create
        return create(stream=True, **body)

    def _reader(self) -> _ChunkReader:
        return _ChunkReader()

    async def aclose(self) -> None:
        await self._client.close()
