"""Builds the named providers and the failover chain from settings."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

from chatsock.config import ProviderConfig, Settings
from chatsock.errors import ChatsockError
from chatsock.providers.base import Provider, Reasoning
from chatsock.providers.demo import DemoProvider

ProviderFactory = Callable[[str, ProviderConfig, Settings], Provider]


def _demo(name: str, config: ProviderConfig, settings: Settings) -> Provider:
    return DemoProvider(
        name,
        tokens_per_second=settings.demo.tokens_per_second,
        model=config.model or settings.demo.model,
        reasons=bool(config.thinking_budget or config.reasoning_effort),
    )


def _sdk(module: str, cls: str, base_url_env: str) -> ProviderFactory:
    """The factory of an SDK-backed kind: config first, then the SDK's env names.

    The module (and its SDK, seconds of imports) loads only when a provider of
    that kind is configured: a worker on the demo provider starts without them."""

    def make(name: str, config: ProviderConfig, settings: Settings) -> Provider:
        kind = importlib.import_module(module)
        provider: Provider = getattr(kind, cls)(
            name,
            base_url=config.base_url or os.environ.get(base_url_env) or None,
            api_key=api_key_for(config),
            default_model=config.model or kind.DEFAULT_MODEL,
            first_token_timeout=config.first_token_timeout,
            idle_timeout=config.idle_timeout,
            connect_timeout=config.connect_timeout,
            max_retries=config.max_retries,
            headers=dict(config.headers),
        )
        provider.reasoning = Reasoning(config.thinking_budget, config.reasoning_effort)
        return provider

    return make


# kind -> factory.
PROVIDER_KINDS: dict[str, ProviderFactory] = {
    "demo": _demo,
    "openai": _sdk("chatsock.providers.openai", "OpenAIProvider", "OPENAI_BASE_URL"),
    "anthropic": _sdk("chatsock.providers.anthropic", "AnthropicProvider", "ANTHROPIC_BASE_URL"),
}

# Built-in names that exist when their SDK's standard key variable is set.
BUILTIN_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


def api_key_for(config: ProviderConfig) -> str | None:
    """The provider's key: `api_key`, else `api_key_env`, else the SDK's standard variable.

    The standard variable (OPENAI_API_KEY, ANTHROPIC_API_KEY) is only a fallback
    for a provider without its own `base_url` and `api_key_env`, so a second
    OpenAI-compatible service or a local server never receives OpenAI's key.
    """
    key = config.resolved_api_key()
    if key is None and not config.api_key_env and not config.base_url:
        env = BUILTIN_KEY_ENV.get(config.kind)
        key = os.environ.get(env) or None if env else None
    return key


class ProviderRegistry:
    """The configured providers by name, and the default chain."""

    def __init__(
        self,
        providers: dict[str, Provider],
        chain: list[str],
        left_out: dict[str, str] | None = None,
    ) -> None:
        unknown = [name for name in chain if name not in providers]
        if unknown:
            raise ChatsockError(
                "invalid_request",
                f"provider chain names unknown provider(s) {unknown}; "
                f"configured: {sorted(providers)}",
            )
        self.providers = providers
        self.chain = chain
        # Configured providers the default chain left out, with the reason.
        self.left_out = left_out or {}

    def chain_for(self, requested: str | None) -> list[Provider]:
        """The providers to try, in order: the requested one alone, else the chain."""
        if requested is None:
            return [self.providers[name] for name in self.chain]
        provider = self.providers.get(requested)
        if provider is None:
            raise ChatsockError(
                "invalid_request",
                f"provider: unknown provider {requested!r}; configured: {sorted(self.providers)}",
            )
        return [provider]

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()


def configured_providers(settings: Settings) -> dict[str, ProviderConfig]:
    """Named provider configs: config.toml's, plus built-ins whose key variable is set."""
    configs = dict(settings.providers)
    for name, env in BUILTIN_KEY_ENV.items():
        if name not in configs and os.environ.get(env):
            configs[name] = ProviderConfig.model_validate({"kind": name})
    configs.setdefault("demo", ProviderConfig(kind="demo"))
    return configs


def default_chain(configs: dict[str, ProviderConfig]) -> tuple[list[str], dict[str, str]]:
    """The chain when none is configured, and why each configured provider left
    out of it is (name -> reason). A provider joins it with a key, or, for the
    openai kind, with a `base_url` alone: a local OpenAI-compatible server
    (Ollama, vLLM, llama.cpp, LM Studio) needs no key."""
    chain: list[str] = []
    left_out: dict[str, str] = {}
    for name, config in configs.items():
        if config.kind == "demo":
            continue
        if api_key_for(config) or (config.kind == "openai" and config.base_url):
            chain.append(name)
        else:
            env = BUILTIN_KEY_ENV.get(config.kind)
            fallback = f" (or {env})" if env and not config.api_key_env else ""
            left_out[name] = (
                f"no API key: set providers.{name}.api_key or api_key_env{fallback}"
                + (", or base_url for a keyless local server" if config.kind == "openai" else "")
            )
    return chain or ["demo"], left_out


def build_registry(
    settings: Settings, extra: dict[str, Provider] | None = None
) -> ProviderRegistry:
    """Create every configured provider. `extra` adds ready-made ones (tests, embedding)."""
    configs = configured_providers(settings)
    providers: dict[str, Provider] = {}
    for name, config in configs.items():
        factory = PROVIDER_KINDS.get(config.kind)
        if factory is None:
            raise ChatsockError(
                "invalid_request",
                f"providers.{name}.kind: {config.kind!r} is not available "
                f"(known kinds: {sorted(PROVIDER_KINDS)})",
            )
        providers[name] = factory(name, config, settings)
    providers.update(extra or {})
    if settings.chain:
        return ProviderRegistry(providers, settings.chain)
    chain, left_out = default_chain(configs)
    return ProviderRegistry(providers, chain, left_out)
