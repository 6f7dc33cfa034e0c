"""`chatsock check [--ping]`: print the provider chain and, with --ping, try each provider.

The output never contains an API key (only whether one is configured) nor a
base URL's credentials: URLs are shown masked, as in the logs.
"""

from __future__ import annotations

import asyncio
from typing import TextIO
from urllib.parse import urlsplit

from chatsock.config import Settings
from chatsock.errors import ChatsockError
from chatsock.providers.anthropic import AnthropicProvider
from chatsock.providers.base import (
    ChatMessage,
    ChatRequest,
    Provider,
    ProviderConnectionError,
    ProviderError,
    ProviderHTTPError,
    ProviderTimeout,
)
from chatsock.providers.openai import OpenAIProvider
from chatsock.providers.registry import BUILTIN_KEY_ENV, ProviderRegistry, build_registry

# Default ports of local model servers, to name the likely culprit of a refusal.
LOCAL_SERVERS = {11434: "Ollama", 8000: "vLLM", 8080: "llama.cpp's server", 1234: "LM Studio"}

PING = ChatRequest([ChatMessage("user", "Reply with one word: ok")], max_tokens=1)


async def run_check(settings: Settings, ping: bool, out: TextIO | None = None) -> int:
    """Print the configured providers; with `ping`, send each a 1-token request.

    Returns the exit code: 0 when the chain is valid (and every ping succeeded).
    """

    def say(line: str = "") -> None:
        print(line, file=out, flush=True)

    try:
        registry = build_registry(settings)
    except ChatsockError as exc:
        say(f"chatsock check: {exc.message}")
        return 1
    try:
        for line in describe(registry):
            say(line)
        if not ping:
            return 0
        say()
        say("ping (one-token request to each provider):")
        ok = True
        for provider in _ordered(registry):
            line, passed = await ping_provider(provider)
            ok = ok and passed
            say(f"  {provider.name:<14} {line}")
        return 0 if ok else 1
    finally:
        await registry.aclose()


def describe(registry: ProviderRegistry) -> list[str]:
    """One line per provider: chain members first, in chain order."""
    lines = [f"provider chain: {' -> '.join(registry.chain)}"]
    for provider in _ordered(registry):
        role = "chain" if provider.name in registry.chain else "named"
        if provider.name in registry.left_out:
            role = f"left out: {registry.left_out[provider.name]}"
        lines.append(
            f"  {provider.name:<14} [{role}] kind={provider.kind} base_url={_base_url(provider)} "
            f"model={provider.default_model} key={_key_present(provider)}"
        )
    return lines


async def ping_provider(provider: Provider) -> tuple[str, bool]:
    """Stream a one-token reply; return ("OK in N ms" or the error with a hint, passed)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout(provider.first_token_timeout):
            async for _delta in provider.stream(PING):
                pass
    except TimeoutError:
        error: ProviderError = ProviderTimeout(
            f"no reply within first_token_timeout={provider.first_token_timeout:g}s",
            provider=provider.name,
            first_token=True,
        )
    except ProviderError as exc:
        error = exc
    else:
        return f"OK in {(loop.time() - started) * 1000:.0f} ms", True
    return f"FAILED: {error.detail}: {hint(error, provider)}", False


def hint(error: ProviderError, provider: Provider) -> str:
    """What to try next, for a failed ping."""
    base_url = _base_url(provider)
    if isinstance(error, ProviderConnectionError):
        if "refused" in error.message:
            server = LOCAL_SERVERS.get(urlsplit(base_url).port or 0, "the server")
            return f"is {server} running?"
        return f"check base_url ({base_url}) and the network"
    if isinstance(error, ProviderHTTPError):
        status = error.status or 0
        if status in (401, 403):
            env = BUILTIN_KEY_ENV.get(provider.kind)
            where = f"{env} or " if env else ""
            return f"check the API key ({where}providers.{provider.name}.api_key or api_key_env)"
        if status == 404:
            return (
                f"check base_url (OpenAI-compatible servers usually end in /v1) "
                f"and the model name {provider.default_model!r}"
            )
        if status == 429:
            wait = f" (Retry-After {error.retry_after:g}s)" if error.retry_after is not None else ""
            return f"rate limited or out of quota{wait}: try again later"
        if status >= 500:
            return "the provider is failing: try again later"
        return "the provider rejected the request"
    if isinstance(error, ProviderTimeout):
        return "is the model still loading? raise first_token_timeout if it is slow to start"
    return "the stream broke after it started: try again"


def _ordered(registry: ProviderRegistry) -> list[Provider]:
    chain = [registry.providers[name] for name in registry.chain]
    return chain + [p for name, p in registry.providers.items() if name not in registry.chain]


def _base_url(provider: Provider) -> str:
    if isinstance(provider, OpenAIProvider | AnthropicProvider):
        return provider.base_url  # masked
    return "(built in)"


def _key_present(provider: Provider) -> str:
    if isinstance(provider, OpenAIProvider | AnthropicProvider):
        return "yes" if provider.has_api_key else "no"
    return "not needed"
