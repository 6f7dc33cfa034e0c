"""The provider contract: one async method that yields deltas, and one error tree.

Every provider (demo, openai, anthropic) implements `Provider.stream`. The
runner owns timeouts, coalescing and failover; a provider only turns one
request into a cancellable async iterator of `Delta`s and maps its failures
into `ProviderError` subclasses.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

Role = Literal["user", "assistant"]

# The one finish-reason vocabulary every provider maps into (docs/providers.md).
FINISH_REASONS = frozenset({"stop", "length", "content_filter", "tool_calls", "error"})


# A provider's own record of its reasoning that must go back with the turn it
# belongs to (Anthropic's signed `thinking` and `redacted_thinking` blocks), as
# the provider sent it. chatsock stores it and never shows it to clients.
Signed = dict[str, Any]


@dataclass(slots=True, frozen=True)
class ChatMessage:
    """One turn of the conversation sent to a provider; an assistant turn may carry
    the signed reasoning blocks its provider asked to get back."""

    role: Role
    content: str
    signed: tuple[Signed, ...] = ()


@dataclass(slots=True, frozen=True)
class Usage:
    """Token usage as reported by the provider."""

    input_tokens: int | None
    output_tokens: int | None
    reasoning_tokens: int | None = None  # part of output_tokens, when reported apart


@dataclass(slots=True, frozen=True)
class ChatRequest:
    """What the runner asks a provider for."""

    messages: list[ChatMessage]
    model: str | None = None
    system_prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    # Reasoning controls, sent only to the providers that take them: OpenAI's
    # reasoning models (`reasoning_effort`), Anthropic's extended thinking
    # (`thinking_budget` tokens, at least 1024).
    reasoning_effort: str | None = None
    thinking_budget: int | None = None


@dataclass(slots=True)
class Delta:
    """A piece of a streamed reply, in one of four shapes.

    - text: `text` is non-empty, nothing else is set;
    - reasoning: `reasoning` is non-empty (the model thinking aloud: Anthropic's
      thinking, `reasoning_content` / `reasoning` of OpenAI-compatible servers),
      nothing else is set;
    - activity: all fields empty (`Delta()`): the model is alive but sent
      nothing to show (a tool call, a signature), so a consumer resets its idle
      deadline and shows nothing;
    - final: the last delta may carry `finish_reason`, `usage` and the `signed`
      reasoning blocks the provider wants back with this turn, with `text == ""`.

    `text` and `reasoning` are always `str`: providers drop content of any other type.
    """

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    reasoning: str = ""
    signed: tuple[Signed, ...] = ()


class ProviderError(Exception):
    """A provider failed. `retryable` tells a client whether trying again may work.

    `message` may be sent to clients: it names the provider, never its URL, and
    quotes no SDK or transport exception. `detail` is for operators (logs,
    `chatsock check`): the same with the URL, credentials masked.
    """

    code: ClassVar[str] = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        detail: str | None = None,
        provider: str = "",
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail or message
        self.provider = provider
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after

    @property
    def fails_over(self) -> bool:
        """Whether the next provider in the chain should be tried (before any delta)."""
        return False


class ProviderConnectionError(ProviderError):
    """The provider could not be reached (refused, DNS, TLS, reset before the body)."""

    @property
    def fails_over(self) -> bool:
        return True


# HTTP statuses before the first delta that move on to the next provider.
FAILOVER_STATUSES = frozenset({401, 403, 404, 408, 409, 429})


class ProviderHTTPError(ProviderError):
    """The provider answered the request with an HTTP error status."""

    @property
    def fails_over(self) -> bool:
        return self.status is not None and (self.status in FAILOVER_STATUSES or self.status >= 500)


class ProviderTimeout(ProviderError):
    """No delta arrived within the first-token or idle timeout."""

    code: ClassVar[str] = "timeout"

    def __init__(
        self,
        message: str,
        *,
        detail: str | None = None,
        provider: str = "",
        first_token: bool = False,
    ) -> None:
        super().__init__(message, detail=detail, provider=provider, retryable=True)
        self.first_token = first_token

    @property
    def fails_over(self) -> bool:
        return self.first_token


class ProviderStreamError(ProviderError):
    """The body of a started stream failed: an error event, a reset, a malformed or cut body.

    `before_text` says no text had been yielded yet; only then does the chain
    move on, since the user has seen nothing.
    """

    def __init__(
        self,
        message: str,
        *,
        detail: str | None = None,
        provider: str = "",
        retryable: bool = False,
        before_text: bool = False,
    ) -> None:
        super().__init__(message, detail=detail, provider=provider, retryable=retryable)
        self.before_text = before_text

    @property
    def fails_over(self) -> bool:
        return self.before_text


@dataclass(slots=True, frozen=True)
class Reasoning:
    """A provider's reasoning settings for requests that name none (config.toml's
    `thinking_budget` and `reasoning_effort` of `[providers.<name>]`)."""

    thinking_budget: int | None = None
    effort: str | None = None


class Provider(ABC):
    """A model provider. Subclasses set `kind` and implement `stream`."""

    kind: ClassVar[str]
    reasoning: Reasoning = Reasoning()

    def __init__(
        self,
        name: str,
        *,
        default_model: str,
        first_token_timeout: float = 30.0,
        idle_timeout: float = 60.0,
    ) -> None:
        self.name = name
        self.default_model = default_model
        self.first_token_timeout = first_token_timeout
        self.idle_timeout = idle_timeout

    def model_for(self, request: ChatRequest) -> str:
        return request.model or self.default_model

    @abstractmethod
    def stream(self, request: ChatRequest) -> AsyncGenerator[Delta, None]:
        """Stream the reply. Cancelling the consumer closes the upstream response."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients and connection pools."""
