"""Who is asking: JWT verification (a shared secret, a public key or a JWKS URL).

Every refusal is an `AuthError` whose `reason` is short, fixed text a client may
read ("token expired", "bad signature", ...): it never echoes the token, a key
or the JWKS URL.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
import unicodedata
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from yarl import URL

from chatsock.config import JWT_HMAC, AuthConfig, ConfigError
from chatsock.identity import ANONYMOUS, ANONYMOUS_USER, AuthError, Identity
from chatsock.jwks import PublicKey, _fits, _Jwks, _Key

if TYPE_CHECKING:
    from chatsock.config import Settings

log = logging.getLogger(__name__)


MAX_TOKEN_CHARS: Final = 16 * 1024
MAX_USER_CHARS: Final = 256
_HMAC_MIN_BYTES: Final = {"HS256": 32, "HS384": 48, "HS512": 64}  # RFC 7518 3.2
_TTL = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", re.IGNORECASE)
_TTL_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

# PyJWT's errors, most specific first, and the reason a client reads.
_REASONS: Final[tuple[tuple[type[Exception], str], ...]] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.InvalidKeyError, "bad signature"),
    (jwt.exceptions.InvalidSubjectError, "claim 'sub' invalid"),
)


def _public_key(pem: str) -> PublicKey:
    """The key of `auth.jwt_public_key` (a PEM public key or certificate)."""
    if "\n" not in pem:
        pem = pem.replace("\\n", "\n")  # a PEM squeezed into one environment line
    data = pem.strip().encode()
    if b"PRIVATE KEY" in data:
        raise ConfigError(
            "auth.jwt_public_key holds a private key: configure the public key only "
            "(openssl pkey -in key.pem -pubout)"
        )
    try:
        if b"BEGIN CERTIFICATE" in data:
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError:
        raise ConfigError(
            "auth.jwt_public_key is not a PEM public key or certificate "
            "(expected -----BEGIN PUBLIC KEY-----)"
        ) from None
    if not isinstance(key, PublicKey):
        raise ConfigError("auth.jwt_public_key: use an RSA, EC or Ed25519/Ed448 key")
    return key


def _hmac_key(auth: AuthConfig, algorithms: list[str]) -> bytes:
    """The secret as bytes, refused when a brute force could recover it."""
    assert auth.jwt_secret is not None
    secret = auth.jwt_secret.get_secret_value().encode()
    need = max((_HMAC_MIN_BYTES[a] for a in algorithms if a in _HMAC_MIN_BYTES), default=32)
    if len(secret) < need:
        raise ConfigError(
            f"auth.jwt_secret is {len(secret)} bytes; {', '.join(algorithms)} needs at "
            f"least {need} (RFC 7518 3.2): generate one with "
            "python -c 'import secrets; print(secrets.token_urlsafe(64))'"
        )
    return secret


class Authenticator:
    """Turns a bearer token into an `Identity`, as `[auth]` configures."""

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self.jwt_mode = config.mode == "jwt"
        self._static: _Key | None = None
        self._jwks: _Jwks | None = None
        self._admin: tuple[str, str] | None = None
        if not self.jwt_mode:
            return
        algorithms = config.algorithms()
        if config.jwt_secret is not None:
            hmac = [a for a in algorithms if a in JWT_HMAC]
            self._static = _Key(_hmac_key(config, hmac), tuple(hmac))
        elif config.jwt_public_key is not None:
            key = _public_key(config.jwt_public_key.get_secret_value())
            algs = tuple(a for a in algorithms if _fits(a, key))
            if not algs:
                raise ConfigError(
                    f"auth.jwt_algorithms: none of {', '.join(algorithms)} fits the "
                    f"{type(key).__name__.removeprefix('_')} in auth.jwt_public_key"
                )
            self._static = _Key(key, algs)
        else:
            assert config.jwks_url is not None
            self._jwks = _Jwks(config.jwks_url, algorithms, config.jwks_cache_s)
            url = URL(config.jwks_url)
            if url.scheme != "https" and not _is_loopback(url.host or ""):
                log.warning(
                    "auth: the JWKS at %s is fetched without TLS: anyone on the path "
                    "can substitute signing keys",
                    self._jwks.shown,
                )
        if config.admin_claim:
            claim, _, value = config.admin_claim.partition("=")
            self._admin = (claim.strip(), value.strip())

    async def identify(self, token: str | None) -> Identity:
        """The caller presenting `token`: ANONYMOUS in the `none` mode, else the
        verified user; AuthError with a client-readable reason if refused."""
        if not self.jwt_mode:
            return ANONYMOUS
        if token is None or not token.strip():
            raise AuthError("token missing")
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthError("malformed token")
        claims = await self._verify(token.strip())
        return Identity(
            self._user(claims),
            admin=self._is_admin(claims),
            expires_at=float(int(claims["exp"])),
        )

    async def _verify(self, token: str) -> dict[str, Any]:
        config = self.config
        try:
            header = jwt.get_unverified_header(token)
            alg = header.get("alg")
            if not isinstance(alg, str) or alg not in config.algorithms():
                raise AuthError("algorithm not allowed")  # `none` included, always
            key = self._static
            if key is None:
                assert self._jwks is not None
                kid = header.get("kid")
                if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_USER_CHARS):
                    raise AuthError("malformed token")
                key = await self._jwks.find(kid, alg)
            if alg not in key.algorithms:
                raise AuthError("algorithm not allowed")
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=list(key.algorithms),
                audience=config.jwt_audience,
                issuer=config.jwt_issuer,
                leeway=config.leeway_s,
                # Without exp a stolen token works forever and a socket is never
                # asked to refresh; every identity provider sets it.
                options={"require": ["exp"]},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"claim '{exc.claim}' missing") from None
        except jwt.PyJWTError as exc:
            reason = next((r for kind, r in _REASONS if isinstance(exc, kind)), "malformed token")
            raise AuthError(reason) from None
        except (ValueError, TypeError, OverflowError):
            raise AuthError("malformed token") from None
        return claims

    def _user(self, claims: Mapping[str, Any]) -> str:
        name = self.config.user_claim
        user = claims.get(name)
        if user is None:
            raise AuthError(f"user claim '{name}' missing")
        if not valid_user(user):
            raise AuthError(f"user claim '{name}' invalid")
        if user == ANONYMOUS_USER:
            # The owner of sessions made in the `none` mode: nobody's token may claim them.
            raise AuthError(f"user claim '{name}' is reserved")
        return str(user)

    def _is_admin(self, claims: Mapping[str, Any]) -> bool:
        if self._admin is None:
            return False
        claim, wanted = self._admin
        value = claims.get(claim)
        return value == wanted or (isinstance(value, list) and wanted in value)

    async def aclose(self) -> None:
        if self._jwks is not None:
            await self._jwks.aclose()


def valid_user(user: object) -> bool:
    """A user name we store and log: a non-empty string of at most 256
    characters, none of them a control character."""
    return (
        isinstance(user, str)
        and 0 < len(user) <= MAX_USER_CHARS
        and not any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in user)
    )


def _is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def refuse_exposed_anonymous(settings: Settings) -> str | None:
    """The operator error when anyone on the network would get every conversation:
    the `none` mode on a non-loopback address without `auth.allow_anonymous`."""
    auth = settings.auth
    host = settings.server.host
    if auth.mode != "none" or auth.allow_anonymous or _is_loopback(host):
        return None
    return (
        f'refusing to start: auth.mode is "none" and server.host {host!r} is not a loopback '
        "address, so anyone who reaches this port could read, change and delete every "
        'conversation. Set auth.mode = "jwt" with a key (docs/security.md), bind to 127.0.0.1, '
        "or set auth.allow_anonymous = true (CHATSOCK_AUTH__ALLOW_ANONYMOUS=true) to serve "
        "anonymous users on purpose."
    )


def parse_ttl(text: str) -> float:
    """Seconds of a duration: `90s`, `30m`, `1h`, `2d` or plain seconds `3600`."""
    match = _TTL.fullmatch(text)
    seconds = float(match[1]) * _TTL_UNITS[match[2].lower()] if match else 0.0
    if seconds <= 0:
        raise ValueError(f"expected a duration such as 90s, 30m, 1h or 2d; got {text!r}")
    return seconds


def admin_claims(auth: AuthConfig) -> dict[str, str]:
    """The claims that make a token an operator's (`auth.admin_claim`)."""
    if not auth.admin_claim:
        raise ValueError("auth.admin_claim is not set: set it (e.g. `role=admin`) to use --admin")
    claim, _, value = auth.admin_claim.partition("=")
    return {claim.strip(): value.strip()}


def make_token(
    auth: AuthConfig, sub: str, ttl_s: float, extra: dict[str, Any] | None = None
) -> str:
    """A token for `sub`, valid `ttl_s` seconds, signed with `auth.jwt_secret`
    (development and the docs: `chatsock token --sub alice --ttl 1h`)."""
    if auth.jwt_secret is None:
        raise ValueError(
            "no auth.jwt_secret to sign with: set CHATSOCK_JWT_SECRET (tokens of a "
            "public-key or JWKS setup come from your identity provider)"
        )
    hmac = [a for a in auth.algorithms() if a in JWT_HMAC]
    if not hmac:
        raise ValueError("auth.jwt_algorithms has no HS256/HS384/HS512 to sign with the secret")
    if not valid_user(sub) or sub == ANONYMOUS_USER:
        raise ValueError(
            f"--sub: expected 1 to {MAX_USER_CHARS} printable characters, not {ANONYMOUS_USER!r}"
        )
    if not ttl_s > 0:
        raise ValueError("the token's lifetime must be positive")
    try:
        secret = _hmac_key(auth, hmac)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, auth.user_claim: sub, "iat": now}
    claims["exp"] = now + max(1, round(ttl_s))
    if auth.jwt_audience is not None:
        claims["aud"] = auth.jwt_audience
    if auth.jwt_issuer is not None:
        claims["iss"] = auth.jwt_issuer
    claims.update(extra or {})
    return jwt.encode(claims, secret, algorithm=hmac[0])
