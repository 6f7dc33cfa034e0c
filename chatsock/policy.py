"""What a client may choose: providers, models, output length, prompt and history.

The operator decides (docs/security.md); a request outside the policy is
`invalid_request` naming the field and what is allowed, before anything is
counted, stored or sent upstream.
"""

from __future__ import annotations

from collections.abc import Sequence

from chatsock.config import LimitsConfig, ProviderConfig, Settings
from chatsock.errors import ChatsockError
from chatsock.logsafe import shown
from chatsock.providers.base import ChatMessage, Provider
from chatsock.providers.registry import ProviderRegistry
from chatsock.requests import ChatStreamRequest, check_limits

ANY = "*"


def _refuse(message: str) -> ChatsockError:
    return ChatsockError("invalid_request", message)


class ClientPolicy:
    """Checks a `chat_stream` request against the server's policy."""

    def __init__(self, settings: Settings, registry: ProviderRegistry) -> None:
        self.limits: LimitsConfig = settings.limits
        self._chain = list(registry.chain)
        # A client may pick a provider of the chain, or one the operator declared
        # in `[providers.<name>]` (a demo one only when it is in the chain).
        self.selectable = [*self._chain] + [
            name
            for name, config in settings.providers.items()
            if name not in self._chain and name in registry.providers and config.kind != "demo"
        ]
        # provider name -> the models a client may name (None: any).
        self._models = {
            name: _allowed_models(provider, settings.providers.get(name))
            for name, provider in registry.providers.items()
        }

    @property
    def chain(self) -> list[str]:
        """The providers tried, in order, when a request names none."""
        return list(self._chain)

    def models(self, provider: str) -> frozenset[str] | None:
        """The models a client may name for `provider` (None: any)."""
        return self._models[provider]

    def check(self, request: ChatStreamRequest) -> None:
        """Raise `invalid_request` naming the first field outside the policy."""
        limits = self.limits
        # A locked field is refused as such, whatever its size.
        if request.system_prompt is not None and not limits.allow_system_prompt:
            raise _refuse("system_prompt: not allowed by this server (limits.allow_system_prompt)")
        if request.history is not None and not limits.allow_client_history:
            raise _refuse("history: not allowed by this server (limits.allow_client_history)")
        check_limits(request, limits)
        self._check_provider_and_model(request)
        if request.max_tokens is not None and request.max_tokens > limits.max_tokens:
            raise _refuse(
                f"max_tokens: at most {limits.max_tokens} allowed (limits.max_tokens), "
                f"got {request.max_tokens}"
            )
        budget = request.thinking_budget
        if budget is not None and budget > limits.max_thinking_budget:
            raise _refuse(
                f"thinking_budget: at most {limits.max_thinking_budget} allowed "
                f"(limits.max_thinking_budget), got {budget}"
            )
        total = prompt_chars(request)
        if total > limits.max_prompt_chars:
            raise _refuse(
                f"{_largest_part(request)}: the prompt (message, history and system prompt) "
                f"is {total} characters; at most {limits.max_prompt_chars} allowed "
                "(limits.max_prompt_chars)"
            )

    def _check_provider_and_model(self, request: ChatStreamRequest) -> None:
        if request.provider is not None and request.provider not in self.selectable:
            raise _refuse(
                f"provider: {shown(request.provider, 64)} is not offered here; "
                f"choose one of {self.selectable} or none"
            )
        if request.model is None:
            return
        # Failover passes the model to every provider it tries, so with no
        # provider named, each provider of the chain must offer it.
        tried = [request.provider] if request.provider else self._chain
        for name in tried:
            allowed = self._models[name]
            if allowed is not None and request.model not in allowed:
                hint = "" if request.provider else " (the chain may fail over to it)"
                raise _refuse(
                    f"model: {shown(request.model, 64)} is not offered by provider "
                    f"{name!r}{hint}; choose one of {sorted(allowed)} or none"
                )


def prompt_chars(request: ChatStreamRequest) -> int:
    """Characters a request puts into the prompt itself."""
    history = sum(len(item.content) for item in request.history or ())
    return len(request.message) + len(request.system_prompt or "") + history


def _largest_part(request: ChatStreamRequest) -> str:
    """The field that contributes most to an oversized prompt, to name in the refusal."""
    parts = {
        "message": len(request.message),
        "history": sum(len(item.content) for item in request.history or ()),
        "system_prompt": len(request.system_prompt or ""),
    }
    return max(parts, key=parts.__getitem__)


def trim_history(messages: Sequence[ChatMessage], budget_chars: int) -> list[ChatMessage]:
    """The newest `messages` whose contents fit in `budget_chars`, starting at a user
    turn (stored history is bounded by `limits.max_prompt_chars` like a client's)."""
    kept: list[ChatMessage] = []
    for message in reversed(messages):
        budget_chars -= len(message.content)
        if budget_chars < 0:
            break
        kept.append(message)
    kept.reverse()
    # A cut conversation opening with the assistant is refused by some chat
    # templates (strict user/assistant alternation); drop the orphaned reply.
    while kept and kept[0].role != "user":
        kept.pop(0)
    return kept


def _allowed_models(provider: Provider, config: ProviderConfig | None) -> frozenset[str] | None:
    """None (any) for `models = ["*"]`; else the listed ones and the provider's own
    model. A provider without a `[providers.<name>]` table (demo's defaults, one
    built in code) offers its own model only."""
    models = config.models if config is not None else []
    if ANY in models:
        return None
    return frozenset({*models, provider.default_model})
