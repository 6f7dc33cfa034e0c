"""Quotas: how much one user, one address and one socket may ask for.

Stream starts, connections and the daily output-token budget are counted in
the store (`RateLimits`), so every worker sees the same counts; one socket's
event budget lives in memory, because a socket lives on one worker.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Final

from chatsock.config import LimitsConfig
from chatsock.errors import ChatsockError
from chatsock.store.limits import RateLimits

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# How long a connection's hold lives without a refresh: a crashed worker's
# connections stop counting after this.
HOLD_TTL_S: Final = 60.0
# A socket refused for this long, or `burst` times in a row, is disconnected.
FLOOD_S: Final = 2.0


def _rate_limited(message: str, retry_after: float) -> ChatsockError:
    return ChatsockError("rate_limited", message, retry_after=retry_after)


class Quotas:
    """The limits of `LimitsConfig` over one store (shared by the workers)."""

    def __init__(
        self,
        store: RateLimits,
        limits: LimitsConfig,
        *,
        hold_ttl_s: float = HOLD_TTL_S,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._limits = limits
        self._hold_ttl_s = hold_ttl_s
        self.refresh_every_s = hold_ttl_s / 3
        self._clock = wall_clock
        self._holds: dict[str, str] = {}  # sid -> address, the connections held here

    # -- stream starts ----------------------------------------------------
    async def check_start(self, user: str | None, ip: str | None) -> None:
        """Count one stream start of `user` (None: the anonymous user, not counted)
        from `ip`; `rate_limited` when either made `stream_starts_per_minute`
        in the last minute. A refused start costs neither anything."""
        per_minute = self._limits.stream_starts_per_minute
        if per_minute == 0:
            return
        rate = per_minute / 60
        buckets = [(f"starts:user:{user}", rate, per_minute)] if user is not None else []
        if ip is not None:
            buckets.append((f"starts:ip:{ip}", rate, per_minute))
        wait = await self._store.take_all(buckets)
        if wait > 0:
            raise _rate_limited(
                f"too many streams started (limits.stream_starts_per_minute: {per_minute} "
                f"per minute); retry in {math.ceil(wait)} s",
                wait,
            )

    # -- the daily output-token budget --------------------------------------
    def _today(self, user: str) -> tuple[str, float]:
        """The budget's key for today (UTC) and the seconds until tomorrow."""
        now = datetime.fromtimestamp(self._clock(), UTC)
        midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        return f"tokens:{user}:{now.date().isoformat()}", (midnight - now).total_seconds()

    async def check_budget(self, user: str) -> None:
        """`rate_limited` until UTC midnight once `user` spent today's budget."""
        budget = self._limits.daily_output_tokens
        if budget == 0:
            return
        key, left_s = self._today(user)
        if await self._store.usage(key) >= budget:
            raise _rate_limited(
                f"today's output-token budget is spent (limits.daily_output_tokens: {budget}); "
                "it renews at 00:00 UTC",
                left_s,
            )

    async def charge(self, user: str, output_tokens: int) -> None:
        """Count `output_tokens` of a finished reply against today's budget."""
        if self._limits.daily_output_tokens == 0 or output_tokens <= 0:
            return
        key, left_s = self._today(user)
        await self._store.add_usage(key, output_tokens, math.ceil(left_s) + 3600)

    # -- connections per address ----------------------------------------------
    async def connect(self, ip: str | None, sid: str) -> bool:
        """Hold a connection of `ip`; False when it already has `connections_per_ip`
        on any worker (an unknown address is not counted)."""
        limit = self._limits.connections_per_ip
        if limit == 0 or ip is None:
            return True
        if not await self._store.hold(f"conn:{ip}", sid, limit, self._hold_ttl_s):
            return False
        self._holds[sid] = ip
        return True

    async def disconnect(self, ip: str | None, sid: str) -> None:
        held = self._holds.pop(sid, None)
        if held is not None:
            await self._store.release(f"conn:{held}", sid)

    async def refresh(self) -> None:
        """Renew the holds of this worker's connections (every `refresh_every_s`)."""
        held = list(self._holds.items())
        await self._store.refresh_holds([(f"conn:{ip}", sid) for sid, ip in held], self._hold_ttl_s)
        # A socket that left during the refresh was put back by it: release it again.
        for sid, ip in held:
            if self._holds.get(sid) != ip:
                await self._store.release(f"conn:{ip}", sid)

    # -- one socket's events ----------------------------------------------------
    def event_budget(self) -> EventBudget:
        return EventBudget(self._limits.socket_events_per_second, self._limits.socket_events_burst)


class EventBudget:
    """One socket's events: a token bucket of `burst` refilled at `rate_per_s`
    (0: unlimited). A socket refused `burst` times in a row, or for `FLOOD_S`,
    is flooding and should be disconnected."""

    def __init__(
        self, rate_per_s: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self._refusals = 0
        self._refused_since: float | None = None

    def spend(self) -> float:
        """0.0 when the event may be handled, else the seconds until it could be."""
        if self.rate_per_s <= 0:
            return 0.0
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate_per_s)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            self._refusals = 0
            self._refused_since = None
            return 0.0
        self._refusals += 1
        if self._refused_since is None:
            self._refused_since = now
        return (1 - self._tokens) / self.rate_per_s

    def exhausted(self) -> bool:
        """Whether the socket keeps sending after being refused: disconnect it."""
        if self._refused_since is None:
            return False
        return self._refusals >= self.burst or self._clock() - self._refused_since >= FLOOD_S


# -- the client's address ----------------------------------------------------------


@lru_cache(maxsize=64)
def trusted_networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    """`server.trusted_proxies` parsed; ValueError naming an entry that is no address."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"server.trusted_proxies: {entry!r} is not an IP address or network (CIDR)"
            ) from None
    return tuple(networks)


def _address(text: str) -> Address | None:
    """An address as peers and X-Forwarded-For write it (port, brackets, IPv4-mapped)."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, networks: Iterable[Network]) -> bool:
    return any(address in network for network in networks)


def client_ip(peer: str | None, forwarded_for: str | None, trusted: list[str]) -> str | None:
    """The client's address: the peer's, unless the peer is a trusted proxy; then
    the right-most `X-Forwarded-For` entry that is not a trusted proxy (a client
    can forge entries on the left, never the one its proxy appended)."""
    if peer is None:
        return None
    current = _address(peer)
    if current is None:
        return peer
    networks = trusted_networks(tuple(trusted))
    if not forwarded_for or not _trusted(current, networks):
        return str(current)
    for entry in reversed(forwarded_for.split(",")):
        if not entry.strip():
            continue
        address = _address(entry)
        if address is None:
            return str(current)  # the proxy that appended it is the last we can vouch for
        current = address
        if not _trusted(address, networks):
            break
    return str(current)
