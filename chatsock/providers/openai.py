"""The `openai` provider: OpenAI and every OpenAI-compatible server (Ollama, vLLM, ...).

The official SDK builds the request, authenticates, retries the initial
connection (connect errors, 408/409/429/5xx, `max_retries` times) and turns
HTTP errors into exception types. The body is then read raw and parsed here
(sse.py + orjson): iterating the SDK's typed chunks costs ~200 µs per token,
this path ~15 µs (shared/FACTS.md, bench/micro_providers.py), and the
aiohttp transport (transport.py) cuts the body read further (bench/micro_upstream.py).

Each chunk gives text (`delta.content`: a string, or a list whose `text`
parts are joined), reasoning (`reasoning_content` from DeepSeek and vLLM,
`reasoning` from Ollama and OpenRouter, else the text entries of
OpenRouter's `reasoning_details`), activity (`tool_calls`, `function_call`,
`refusal`) or nothing. Content of any other type, and every field chatsock
does not stream, is dropped and logged once per stream. Usage reports
`completion_tokens_details.reasoning_tokens` when the server counts them, and
a request's `reasoning_effort` is passed through (OpenAI's reasoning models).

Finish reasons map into base.FINISH_REASONS:

    stop                      -> stop
    length                    -> length
    content_filter            -> content_filter
    tool_calls, function_call -> tool_calls
    abort, error              -> error    (vLLM, some proxies)
    anything else, or none    -> stop     (the server ended the stream normally)
"""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import urlsplit

import openai
import orjson

from chatsock.providers.base import ChatRequest, Delta, Usage
from chatsock.providers.errors import MALFORMED, UpstreamEventError, upstream_message
from chatsock.providers.streaming import IgnoredParts, SSEStreamProvider, type_name

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


# Delta fields that carry reasoning, in order of preference: a server that
# sends several (OpenRouter: `reasoning` and `reasoning_details`) repeats the
# same thought in each. The others are parts chatsock does not support, logged
# once per stream.
REASONING_FIELDS = ("reasoning_content", "reasoning", "reasoning_details")
# The entries of `reasoning_details` that hold readable text, and where.
REASONING_DETAIL_TEXT = {"reasoning.text": "text", "reasoning.summary": "summary"}
NON_TEXT_REASONING = "non-text reasoning"
UNSUPPORTED_ACTIVITY_FIELDS = frozenset({"tool_calls", "refusal", "function_call"})
# Fields with nothing to do or to log: the role, and content (read separately).
PLAIN_FIELDS = frozenset({"role", "content"})
NON_TEXT = "non-text delta.content"


class _ChunkReader:
    """The state of one OpenAI stream: turns each `data:` payload into text or activity."""

    __slots__ = ("finish_reason", "finished", "ignored", "thought", "usage")

    def __init__(self, provider: str) -> None:
        self.finished = False
        self.thought = ""
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.ignored = IgnoredParts(provider)

    def read(self, event: str, data: str) -> str | None:
        """Text, "" for activity, or None for one event; UpstreamEventError for errors."""
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
                    text = self._delta(delta)
                reason = choice.get("finish_reason")
                if reason:
                    self.finish_reason = reason
            usage = chunk.get("usage")
            if usage:
                details = usage.get("completion_tokens_details") or {}
                self.usage = Usage(
                    usage.get("prompt_tokens"),
                    usage.get("completion_tokens"),
                    details.get("reasoning_tokens") if isinstance(details, dict) else None,
                )
            error = chunk.get("error")
        except MALFORMED as exc:
            raise UpstreamEventError(f"malformed chunk: {exc}", retryable=True) from exc
        if error:
            # vLLM, proxies and OpenAI itself can report a failure inside the stream.
            detail = upstream_message({"error": error})
            raise UpstreamEventError(f"error event: {detail}", retryable=True)
        return text

    def _delta(self, delta: dict[str, Any]) -> str | None:
        content = delta.get("content")
        if type(content) is str and len(delta) == 1:
            return content or None  # The common case, kept short: one text piece.
        text = self._content(content)
        active = thinking = False
        for field, value in delta.items():
            if not value or field in PLAIN_FIELDS:
                continue
            if field in REASONING_FIELDS:
                active = thinking = True
            elif field in UNSUPPORTED_ACTIVITY_FIELDS:
                active = True
                self.ignored.note(f"delta.{field}")
            else:
                self.ignored.note(f"delta field {type_name(field)}")
        if thinking:
            self._think(delta)
        if text:
            return text
        return "" if active else None

    def _think(self, delta: dict[str, Any]) -> None:
        """Take the reasoning of `delta` from its preferred field."""
        for field in REASONING_FIELDS:
            value = delta.get(field)
            if value:
                thought = self._reasoning(field, value)
                if thought is not None:
                    self.thought += thought
                    return

    def _reasoning(self, field: str, value: object) -> str | None:
        """The readable text of one reasoning field (None: none here, or not text)."""
        if isinstance(value, str):
            return value
        if field == "reasoning_details" and isinstance(value, list):
            texts = [
                part[REASONING_DETAIL_TEXT[part["type"]]]
                for part in value
                if isinstance(part, dict)
                and part.get("type") in REASONING_DETAIL_TEXT
                and isinstance(part.get(REASONING_DETAIL_TEXT[part["type"]]), str)
            ]
            return "".join(texts) or None  # encrypted entries: activity, nothing to show
        self.ignored.note(
            NON_TEXT_REASONING, f"{field} of type {type(value).__name__}", level=logging.WARNING
        )
        return None

    def _content(self, content: object) -> str | None:
        """`delta.content` as text: a str, or the text parts of a list joined."""
        if content is None or isinstance(content, str):
            return content
        if isinstance(content, list):
            texts = [
                part["text"]
                for part in content
                if isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ]
            if len(texts) < len(content):
                self.ignored.note(NON_TEXT, "a list with non-text parts", level=logging.WARNING)
            return "".join(texts)
        self.ignored.note(NON_TEXT, f"of type {type(content).__name__}", level=logging.WARNING)
        return None

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
        effort = request.reasoning_effort or self.reasoning.effort
        if effort is not None:
            body["reasoning_effort"] = effort
        return body

    def _open(self, body: dict[str, Any]) -> AbstractAsyncContextManager[Any]:
        create = self._client.chat.completions.with_streaming_response.create
        return create(stream=True, **body)

    def _reader(self) -> _ChunkReader:
        return _ChunkReader(self.name)

    async def aclose(self) -> None:
        await self._client.close()
