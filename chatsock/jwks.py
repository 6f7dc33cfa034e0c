"""Verification keys of the jwt mode: which key verifies which algorithm, and
the keys of a JWKS URL, fetched and cached (docs/security.md)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from yarl import URL

from chatsock.identity import AuthError

log = logging.getLogger("chatsock.auth")

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)

# An unknown `kid` refetches the JWKS at most this often (or every jwks_cache_s
# when that is shorter), so random kids cannot hammer the JWKS server.
JWKS_REFETCH_S: Final = 5.0
JWKS_TIMEOUT_S: Final = 5.0
JWKS_MAX_BYTES: Final = 1024 * 1024
_EC_CURVES: Final = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}


@dataclass(frozen=True, slots=True)
class _Key:
    """A verification key and the configured algorithms it may verify."""

    key: PublicKey | bytes
    algorithms: tuple[str, ...]


def _fits(alg: str, key: PublicKey) -> bool:
    """Whether `alg` is an algorithm of `key`'s type (never HS for a public key)."""
    if alg.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey)
    if alg in _EC_CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _EC_CURVES[alg])
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


def _jwks_entries(document: Any, configured: list[str]) -> dict[str | None, list[_Key]]:
    """The usable signing keys of a JWKS document, by `kid`.

    Symmetric (`oct`) and private keys are never used: a JWKS is public, and a
    symmetric key in it would let anyone sign (algorithm confusion)."""
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise ValueError("the JWKS has no `keys` list")
    found: dict[str | None, list[_Key]] = {}
    for jwk in keys:
        if not isinstance(jwk, dict) or jwk.get("kty") in (None, "oct") or "d" in jwk:
            continue
        if jwk.get("use", "sig") != "sig" or not isinstance(jwk.get("kid", ""), str):
            continue
        named = jwk.get("alg")
        try:
            key = jwt.PyJWK(jwk, algorithm=named if isinstance(named, str) else None).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
        if not isinstance(key, PublicKey):
            continue
        algs = tuple(a for a in configured if _fits(a, key) and named in (None, a))
        if algs:
            found.setdefault(jwk.get("kid"), []).append(_Key(key, algs))
    return found


class _Jwks:
    """Keys fetched from `auth.jwks_url`, cached, refetched on an unknown `kid`.

    Fetches are attempted at most once per `min(JWKS_REFETCH_S, cache_s)`, so
    neither random kids nor a down JWKS server cause a fetch per request. When
    a refresh fails the last keys stay in use for one more cache period."""

    def __init__(self, url: str, algorithms: list[str], cache_s: float) -> None:
        self.url = url
        self.algorithms = algorithms
        self.cache_s = cache_s
        self.interval = min(JWKS_REFETCH_S, cache_s)
        # For the log only: never the userinfo, query or fragment.
        self.shown = str(URL(url).with_user(None).with_query(None).with_fragment(None))
        self._keys: dict[str | None, list[_Key]] | None = None
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()
        self._http: aiohttp.ClientSession | None = None

    async def find(self, kid: str | None, alg: str) -> _Key:
        """The key that verifies a token with `kid` and `alg`; AuthError if none."""
        now = time.monotonic()
        if self._keys is None or now - self._fetched_at >= self.cache_s:
            await self._refresh()
        key = self._lookup(kid, alg)
        if key is None:
            await self._refresh()  # a rotation: a kid this worker has not seen yet
            key = self._lookup(kid, alg)
        if key is None:
            raise AuthError("keys unavailable" if self._keys is None else "unknown key")
        return key

    def _lookup(self, kid: str | None, alg: str) -> _Key | None:
        if self._keys is not None and time.monotonic() - self._fetched_at >= 2 * self.cache_s:
            self._keys = None  # too stale to trust: the server has been failing
        if not self._keys:
            return None
        candidates = self._keys.get(kid, [])
        if kid is None and not candidates and len(self._keys) == 1:
            candidates = next(iter(self._keys.values()))  # one key: a kid is not needed
        for key in candidates:
            if alg in key.algorithms:
                return key
        return candidates[0] if candidates else None  # its algorithm check refuses

    def _may_attempt(self) -> bool:
        last = self._attempted_at
        return last is None or time.monotonic() - last >= self.interval

    async def _refresh(self) -> None:
        if not self._lock.locked() and not self._may_attempt():
            return
        # A fetch under way is awaited, so the requests that arrive during
        # the first fetch see its keys instead of "keys unavailable".
        async with self._lock:
            if not self._may_attempt():
                return  # another request refreshed while this one waited
            self._attempted_at = time.monotonic()
            try:
                keys = _jwks_entries(orjson.loads(await self._fetch()), self.algorithms)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning(
                    "auth: fetching the JWKS from %s failed: %s", self.shown, type(exc).__name__
                )
                return
            self._keys = keys
            self._fetched_at = time.monotonic()
            log.info("auth: %d signing keys from %s", sum(map(len, keys.values())), self.shown)

    async def _fetch(self) -> bytes:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=JWKS_TIMEOUT_S),
                headers={"Accept": "application/json"},
            )
        async with self._http.get(self.url, raise_for_status=True) as response:
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > JWKS_MAX_BYTES:
                    raise ValueError("the JWKS is too large")
            return bytes(body)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
