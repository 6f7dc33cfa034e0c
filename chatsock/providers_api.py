"""`GET /api/providers`: what this client may choose, for a provider and model picker.

The listing is the policy's (chatsock/policy.py): the providers a request may
name and the models each may be asked for. It never carries a base URL, a key
or a header: only names.
"""

from __future__ import annotations

from aiohttp import web

from chatsock import jsoncodec
from chatsock.policy import ClientPolicy
from chatsock.protocol import Payload
from chatsock.providers.registry import ProviderRegistry


def offer(policy: ClientPolicy, registry: ProviderRegistry) -> Payload:
    """The providers a client may name, each with its default model and the models
    it may be asked for (`any_model`: any name), and what an unnamed request gets."""
    providers = []
    for name in policy.selectable:
        allowed = policy.models(name)
        providers.append(
            {
                "name": name,
                "default_model": registry.providers[name].default_model,
                "models": sorted(allowed) if allowed is not None else [],
                "any_model": allowed is None,
            }
        )
    chain = policy.chain
    first = chain[0] if chain else None
    return {
        "default": {
            "provider": first,
            "model": registry.providers[first].default_model if first is not None else None,
            "chain": chain,
        },
        "providers": providers,
    }


class ProvidersApi:
    """The route; the listing is worked out once, as the policy is fixed at start."""

    def __init__(self, policy: ClientPolicy, registry: ProviderRegistry) -> None:
        self._offer = offer(policy, registry)

    def add_routes(self, router: web.UrlDispatcher) -> list[web.AbstractRoute]:
        """Add the route; return it (the HTTP API adds its auth and CORS to it)."""
        return [router.add_get("/api/providers", self.providers)]

    async def providers(self, request: web.Request) -> web.Response:
        """`GET /api/providers`: the same answer for every caller the API admits."""
        return web.json_response(self._offer, dumps=jsoncodec.dumps)
