"""Who is asking and whether they may: identity, client address and quotas,
shared by the Socket.IO and HTTP transports."""

from __future__ import annotations

import asyncio
import logging

from chatsock.auth import Authenticator
from chatsock.identity import Identity
from chatsock.policy import ClientPolicy
from chatsock.quotas import Quotas, client_ip, trusted_networks
from chatsock.store import StoreUnavailable

log = logging.getLogger(__name__)


class Gate:
    """Authenticates callers, finds their address and checks their quotas."""

    def __init__(
        self,
        authenticator: Authenticator,
        quotas: Quotas,
        policy: ClientPolicy,
        trusted_proxies: list[str],
    ) -> None:
        self.authenticator = authenticator
        self.quotas = quotas
        self.policy = policy
        trusted_networks(tuple(trusted_proxies))  # a bad entry stops start-up, named
        self._trusted = trusted_proxies

    async def identify(self, token: str | None) -> Identity:
        """The caller of `token`; AuthError (with a client-readable reason) if refused."""
        return await self.authenticator.identify(token)

    def address(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The client's IP: `X-Forwarded-For` only from a trusted proxy."""
        return client_ip(peer, forwarded_for, self._trusted)

    async def may_start(self, who: Identity, ip: str | None) -> None:
        """Raise `rate_limited` (with retry_after) when `who` or `ip` may not start a
        stream now: the daily output-token budget, then the start rates."""
        # The anonymous user of the `none` mode is everyone: only its address counts.
        user = None if who.anonymous else who.user
        if user is not None:
            await self.quotas.check_budget(user)  # a read: refused, it costs no start
        await self.quotas.check_start(user, ip)

    async def keep_holds(self) -> None:
        """Run until cancelled: renew this worker's connection holds, so they count
        on every worker while the sockets live (and expire if this worker dies)."""
        while True:
            await asyncio.sleep(self.quotas.refresh_every_s)
            try:
                await self.quotas.refresh()
            except StoreUnavailable as exc:
                log.warning("connection holds not renewed: %s", exc)

    async def aclose(self) -> None:
        await self.authenticator.aclose()
