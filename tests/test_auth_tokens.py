"""The JWT authenticator against real tokens: a shared secret, a public key, and
a JWKS served by a loopback aiohttp server with key rotation; plus the token
CLI helpers and the refusal to serve anonymous users on a public address."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import orjson
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from chatsock.auth import (
    Authenticator,
    admin_claims,
    make_token,
    parse_ttl,
    refuse_exposed_anonymous,
)
from chatsock.config import AuthConfig, ConfigError
from chatsock.identity import ANONYMOUS, AuthError

SECRET = "s" * 64
OTHER_SECRET = "o" * 64


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hand_signed(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None) -> str:
    """A token PyJWT would refuse to make: `alg: none`, or HMAC keyed by a PEM."""
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}"
    signature = b""
    if hmac_key is not None:
        signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": int(time.time()) + 600, **extra}


def _pem(key: Any) -> str:
    return str(
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key_2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture
async def authenticator() -> AsyncIterator[Callable[..., Authenticator]]:
    """Builds Authenticators from `[auth]` keys; closes them after the test."""
    made: list[Authenticator] = []

    def build(**auth: Any) -> Authenticator:
        made.append(Authenticator(AuthConfig(**auth)))
        return made[-1]

    yield build
    for each in made:
        await each.aclose()


@pytest.fixture
def hs(authenticator: Callable[..., Authenticator]) -> Authenticator:
    return authenticator(mode="jwt", jwt_secret=SECRET)


async def _refused(auth: Authenticator, token: str | None) -> str:
    with pytest.raises(AuthError) as caught:
        await auth.identify(token)
    return caught.value.reason


async def _outcome(auth: Authenticator, token: str) -> str:
    """The user a token names, or why it is refused."""
    try:
        return (await auth.identify(token)).user
    except AuthError as exc:
        return f"refused: {exc.reason}"


async def _outcomes_until(auth: Authenticator, token: str, wanted: str) -> set[str]:
    """Present `token` every 0.1 s until the outcome is `wanted`; the others seen."""
    seen: set[str] = set()
    deadline = time.monotonic() + 15
    while (outcome := await _outcome(auth, token)) != wanted:
        seen.add(outcome)
        assert time.monotonic() < deadline, f"still {seen}, not {wanted!r}, after 15 s"
        await asyncio.sleep(0.1)
    return seen


# -- the none mode --------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "", "garbage", jwt.encode(_claims(), SECRET)])
async def test_none_mode_is_the_anonymous_user_whatever_is_sent(authenticator, token):
    assert await authenticator().identify(token) is ANONYMOUS


# -- a shared secret --------------------------------------------------------------


async def test_a_valid_token_names_its_user_and_expiry(hs):
    exp = int(time.time()) + 600
    who = await hs.identify(jwt.encode({"sub": "alice", "exp": exp}, SECRET))
    assert (who.user, who.admin, who.expires_at, who.anonymous) == ("alice", False, exp, False)


@pytest.mark.parametrize("token", [None, "", "   "])
async def test_a_missing_token_is_refused(hs, token):
    assert await _refused(hs, token) == "token missing"


async def test_an_expired_token_is_refused(hs):
    token = jwt.encode(_claims(exp=int(time.time()) - 5), SECRET)
    assert await _refused(hs, token) == "token expired"


async def test_a_token_not_yet_valid_is_refused(hs):
    token = jwt.encode(_claims(nbf=int(time.time()) + 300), SECRET)
    assert await _refused(hs, token) == "token not yet valid"


async def test_a_token_issued_in_the_future_is_refused(hs):
    token = jwt.encode(_claims(iat=int(time.time()) + 300), SECRET)
    assert await _refused(hs, token) == "token not yet valid"


async def test_a_token_signed_with_another_secret_is_refused(hs):
    assert await _refused(hs, jwt.encode(_claims(), OTHER_SECRET)) == "bad signature"


async def test_a_token_whose_claims_were_changed_after_signing_is_refused(hs):
    header, _, signature = jwt.encode(_claims(), SECRET).split(".")
    forged = _b64(orjson.dumps(_claims(sub="mallory")))
    assert await _refused(hs, f"{header}.{forged}.{signature}") == "bad signature"


async def test_the_audience_and_issuer_must_match_when_configured(authenticator):
    auth = authenticator(mode="jwt", jwt_secret=SECRET, jwt_audience="chat", jwt_issuer="idp")
    good = _claims(aud="chat", iss="idp")
    assert (await auth.identify(jwt.encode(good, SECRET))).user == "alice"
    listed = _claims(aud=["other", "chat"], iss="idp")
    assert (await auth.identify(jwt.encode(listed, SECRET))).user == "alice"
    assert await _refused(auth, jwt.encode({**good, "aud": "other"}, SECRET)) == "wrong audience"
    assert await _refused(auth, jwt.encode({**good, "iss": "evil"}, SECRET)) == "wrong issuer"
    no_aud = {k: v for k, v in good.items() if k != "aud"}
    assert await _refused(auth, jwt.encode(no_aud, SECRET)) == "claim 'aud' missing"
    no_iss = {k: v for k, v in good.items() if k != "iss"}
    assert await _refused(auth, jwt.encode(no_iss, SECRET)) == "claim 'iss' missing"


async def test_a_token_for_some_audience_is_refused_when_none_is_configured(hs):
    # The token was meant for another service: it must not work here either.
    assert await _refused(hs, jwt.encode(_claims(aud="billing"), SECRET)) == "wrong audience"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
async def test_alg_none_is_refused(hs, alg):
    token = _hand_signed({"alg": alg, "typ": "JWT"}, _claims(), None)
    assert await _refused(hs, token) == "algorithm not allowed"


async def test_only_the_configured_hmac_algorithm_is_accepted(hs, rsa_key):
    assert await _refused(hs, jwt.encode(_claims(), SECRET, "HS512")) == "algorithm not allowed"
    assert await _refused(hs, jwt.encode(_claims(), rsa_key, "RS256")) == "algorithm not allowed"


async def test_a_token_without_claims_is_refused_for_its_missing_expiry(hs):
    assert await _refused(hs, jwt.encode({}, SECRET)) == "claim 'exp' missing"
    assert await _refused(hs, jwt.encode({"sub": "alice"}, SECRET)) == "claim 'exp' missing"


async def test_a_token_without_the_user_claim_is_refused(hs):
    token = jwt.encode({"exp": int(time.time()) + 60}, SECRET)
    assert await _refused(hs, token) == "user claim 'sub' missing"


@pytest.mark.parametrize(
    ("user", "reason"),
    [
        ("", "user claim 'email' invalid"),
        ("x" * 257, "user claim 'email' invalid"),
        (42, "user claim 'email' invalid"),
        (["alice"], "user claim 'email' invalid"),
        ("alice\nINFO forged log line", "user claim 'email' invalid"),
        ("anonymous", "user claim 'email' is reserved"),
    ],
)
async def test_the_user_claim_must_be_a_short_printable_string(authenticator, user, reason):
    auth = authenticator(mode="jwt", jwt_secret=SECRET, user_claim="email")
    assert await _refused(auth, jwt.encode(_claims(email=user), SECRET)) == reason


async def test_the_user_claim_names_the_user(authenticator):
    auth = authenticator(mode="jwt", jwt_secret=SECRET, user_claim="email")
    who = await auth.identify(jwt.encode(_claims(email="a@example.com", sub="u1"), SECRET))
    assert who.user == "a@example.com"
    assert (await auth.identify(jwt.encode(_claims(email="x" * 256), SECRET))).user == "x" * 256


async def test_a_sub_that_is_not_a_string_is_refused(hs):
    assert await _refused(hs, jwt.encode(_claims(sub=7), SECRET)) == "claim 'sub' invalid"


@pytest.mark.parametrize(
    ("claims", "admin"),
    [
        ({"role": "admin"}, True),
        ({"role": ["user", "admin"]}, True),
        ({"role": "user"}, False),
        ({"role": ["user"]}, False),
        ({"role": "administrator"}, False),
        ({"role": {"admin": True}}, False),
        ({}, False),
    ],
)
async def test_the_admin_claim_marks_operators(authenticator, claims, admin):
    auth = authenticator(mode="jwt", jwt_secret=SECRET, admin_claim="role=admin")
    assert (await auth.identify(jwt.encode(_claims(**claims), SECRET))).admin is admin


async def test_without_an_admin_claim_configured_nobody_is_admin(hs):
    assert (await hs.identify(jwt.encode(_claims(role="admin"), SECRET))).admin is False


async def test_leeway_tolerates_clock_skew_up_to_its_size(authenticator):
    strict = authenticator(mode="jwt", jwt_secret=SECRET)
    lenient = authenticator(mode="jwt", jwt_secret=SECRET, leeway_s=60)
    now = int(time.time())
    expired = jwt.encode(_claims(exp=now - 10), SECRET)
    early = jwt.encode(_claims(nbf=now + 10), SECRET)
    assert await _refused(strict, expired) == "token expired"
    assert await _refused(strict, early) == "token not yet valid"
    assert (await lenient.identify(expired)).user == "alice"
    assert (await lenient.identify(early)).user == "alice"
    long_expired = jwt.encode(_claims(exp=now - 120), SECRET)
    assert await _refused(lenient, long_expired) == "token expired"


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "a.b.c",
        "a.b",
        "....",
        "x" * 20000,
        jwt.encode(_claims(exp=float("inf")), SECRET),
        jwt.encode(_claims(exp="soon"), SECRET),
        _hand_signed({"alg": "HS256", "kid": 7}, _claims(), SECRET.encode()),
        _b64(b"[]") + "." + _b64(b"{}") + ".",
    ],
)
async def test_a_malformed_token_is_refused_without_a_crash(hs, token):
    assert await _refused(hs, token) == "malformed token"


@pytest.mark.parametrize(
    "algorithms", [["HS256"], ["HS512"], ["HS256", "HS384", "HS512"], []], ids=str
)
def test_a_secret_too_short_to_resist_brute_force_is_refused_at_start_up(algorithms):
    with pytest.raises(ConfigError, match=r"auth\.jwt_secret is 10 bytes.*token_urlsafe"):
        Authenticator(AuthConfig(mode="jwt", jwt_secret="0123456789", jwt_algorithms=algorithms))


# -- a public key -------------------------------------------------------------------


async def test_rs256_es256_and_eddsa_tokens_verify_with_their_public_keys(
    authenticator, rsa_key, ec_key, ed_key
):
    for key, alg in ((rsa_key, "RS256"), (ec_key, "ES256"), (ed_key, "EdDSA")):
        auth = authenticator(mode="jwt", jwt_public_key=_pem(key))
        assert (await auth.identify(jwt.encode(_claims(), key, alg))).user == "alice", alg


async def test_a_token_signed_by_another_key_is_refused(authenticator, rsa_key, rsa_key_2):
    auth = authenticator(mode="jwt", jwt_public_key=_pem(rsa_key))
    assert await _refused(auth, jwt.encode(_claims(), rsa_key_2, "RS256")) == "bad signature"


async def test_hs256_signed_with_the_public_key_as_secret_is_refused(authenticator, rsa_key):
    """Algorithm confusion: the public key is public, so an HMAC keyed by it is forgeable."""
    pem = _pem(rsa_key)
    auth = authenticator(mode="jwt", jwt_public_key=pem)
    for key in (pem.encode(), pem.strip().encode()):
        forged = _hand_signed({"alg": "HS256", "typ": "JWT"}, _claims(sub="mallory"), key)
        assert await _refused(auth, forged) == "algorithm not allowed"


async def test_a_token_of_another_key_type_is_refused(authenticator, rsa_key, ec_key):
    auth = authenticator(mode="jwt", jwt_public_key=_pem(rsa_key))
    assert await _refused(auth, jwt.encode(_claims(), ec_key, "ES256")) == "algorithm not allowed"


async def test_ps256_verifies_when_configured(authenticator, rsa_key):
    auth = authenticator(mode="jwt", jwt_public_key=_pem(rsa_key), jwt_algorithms=["PS256"])
    assert (await auth.identify(jwt.encode(_claims(), rsa_key, "PS256"))).user == "alice"
    assert await _refused(auth, jwt.encode(_claims(), rsa_key, "RS256")) == "algorithm not allowed"


async def test_a_pem_on_one_environment_line_and_a_certificate_both_load(authenticator, ec_key):
    token = jwt.encode(_claims(), ec_key, "ES256")
    one_line = _pem(ec_key).replace("\n", "\\n")
    assert (await authenticator(mode="jwt", jwt_public_key=one_line).identify(token)).user
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ec_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(ec_key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    assert (await authenticator(mode="jwt", jwt_public_key=cert_pem).identify(token)).user


def test_a_private_key_or_junk_as_the_public_key_is_refused_at_start_up(rsa_key):
    private = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    with pytest.raises(ConfigError, match="holds a private key") as caught:
        Authenticator(AuthConfig(mode="jwt", jwt_public_key=private))
    assert private[40:80] not in str(caught.value)
    with pytest.raises(ConfigError, match="not a PEM public key"):
        Authenticator(AuthConfig(mode="jwt", jwt_public_key="-----BEGIN PUBLIC KEY-----\nAAAA"))


def test_algorithms_that_do_not_fit_the_public_key_are_refused_at_start_up(ec_key):
    with pytest.raises(ConfigError, match="none of RS256 fits"):
        Authenticator(AuthConfig(mode="jwt", jwt_public_key=_pem(ec_key), jwt_algorithms=["RS256"]))


# -- a JWKS on a loopback server --------------------------------------------------------


def _jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    public = key.public_key()
    to_jwk = {
        rsa.RSAPublicKey: RSAAlgorithm.to_jwk,
        ec.EllipticCurvePublicKey: ECAlgorithm.to_jwk,
        ed25519.Ed25519PublicKey: OKPAlgorithm.to_jwk,
    }
    for kind, export in to_jwk.items():
        if isinstance(public, kind):
            return {**export(public, as_dict=True), "kid": kid, **extra}
    raise AssertionError(type(key))


class JwksServer:
    """Serves `keys` as a JWKS at /jwks.json; counts requests; can fail on demand."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.status = 200
        self.hits = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks.json", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/jwks.json"

    async def _serve(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.status != 200:
            return web.Response(status=self.status, text="down")
        return web.json_response({"keys": self.keys})

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def jwks() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    await server.start()
    yield server
    await server.close()


def _signed(key: Any, alg: str, kid: str, **claims: Any) -> str:
    return jwt.encode(_claims(**claims), key, alg, headers={"kid": kid})


async def test_jwks_keys_of_every_type_verify_tokens_by_kid(
    authenticator, jwks, rsa_key, ec_key, ed_key
):
    jwks.keys = [_jwk(rsa_key, "r1"), _jwk(ec_key, "e1"), _jwk(ed_key, "d1")]
    auth = authenticator(mode="jwt", jwks_url=jwks.url)
    for key, alg, kid in (
        (rsa_key, "RS256", "r1"),
        (ec_key, "ES256", "e1"),
        (ed_key, "EdDSA", "d1"),
    ):
        assert (await auth.identify(_signed(key, alg, kid))).user == "alice", alg
    assert jwks.hits == 1
    # The kid names the key: a token signed by one key and labelled with another is refused.
    assert await _refused(auth, _signed(rsa_key, "RS256", "e1")) == "algorithm not allowed"
    assert await _refused(auth, _signed(ec_key, "ES256", "r1")) == "algorithm not allowed"


async def test_a_new_kid_is_accepted_after_a_refetch(authenticator, jwks, rsa_key, rsa_key_2):
    jwks.keys = [_jwk(rsa_key, "old")]
    auth = authenticator(mode="jwt", jwks_url=jwks.url, jwks_cache_s=300)
    assert (await auth.identify(_signed(rsa_key, "RS256", "old"))).user == "alice"
    jwks.keys = [_jwk(rsa_key, "old"), _jwk(rsa_key_2, "new")]
    rotated = _signed(rsa_key_2, "RS256", "new", sub="bob")
    # Within the refetch interval the new kid waits; then one refetch finds it,
    # long before the 300 s cache would have expired.
    assert await _outcomes_until(auth, rotated, "bob") <= {"refused: unknown key"}
    assert jwks.hits == 2


async def test_a_removed_key_is_refused_once_the_cache_expires(
    authenticator, jwks, rsa_key, rsa_key_2
):
    jwks.keys = [_jwk(rsa_key, "old"), _jwk(rsa_key_2, "new")]
    auth = authenticator(mode="jwt", jwks_url=jwks.url, jwks_cache_s=1.0)
    old = _signed(rsa_key, "RS256", "old")
    assert (await auth.identify(old)).user == "alice"
    jwks.keys = [_jwk(rsa_key_2, "new")]
    hits = jwks.hits
    assert (await auth.identify(old)).user == "alice"  # cached until it expires
    assert jwks.hits == hits

    assert await _outcomes_until(auth, old, "refused: unknown key") <= {"alice"}
    assert (await auth.identify(_signed(rsa_key_2, "RS256", "new"))).user == "alice"


async def test_random_kids_cannot_hammer_the_jwks_server(authenticator, jwks, rsa_key):
    jwks.keys = [_jwk(rsa_key, "k1")]
    auth = authenticator(mode="jwt", jwks_url=jwks.url)
    tokens = [_signed(rsa_key, "RS256", uuid.uuid4().hex) for _ in range(100)]
    reasons = await asyncio.gather(*(_refused(auth, t) for t in tokens))
    assert set(reasons) == {"unknown key"}
    more = await asyncio.gather(*(_refused(auth, t) for t in tokens))
    assert set(more) == {"unknown key"}
    assert jwks.hits == 1, "random kids each caused a JWKS fetch"
    assert (await auth.identify(_signed(rsa_key, "RS256", "k1"))).user == "alice"


async def test_garbage_and_alg_none_do_not_trigger_a_fetch(authenticator, jwks, rsa_key):
    jwks.keys = [_jwk(rsa_key, "k1")]
    auth = authenticator(mode="jwt", jwks_url=jwks.url)
    assert await _refused(auth, "garbage") == "malformed token"
    none = _hand_signed({"alg": "none", "kid": "k1"}, _claims(), None)
    assert await _refused(auth, none) == "algorithm not allowed"
    assert jwks.hits == 0


async def test_symmetric_keys_in_a_jwks_are_never_used(authenticator, jwks, rsa_key):
    """A JWKS is public: an `oct` key in it would let anyone sign tokens."""
    raw = b"k" * 64
    jwks.keys = [_jwk(rsa_key, "r1"), {"kty": "oct", "kid": "sym", "k": _b64(raw)}]
    auth = authenticator(mode="jwt", jwks_url=jwks.url)
    forged = _hand_signed({"alg": "HS256", "kid": "sym"}, _claims(sub="mallory"), raw)
    assert await _refused(auth, forged) == "algorithm not allowed"
    assert await _refused(auth, _signed(rsa_key, "RS256", "sym")) == "unknown key"
    # HS256 keyed by the RSA JWK's public members, or by its PEM: refused too.
    pem_forged = _hand_signed({"alg": "HS256", "kid": "r1"}, _claims(), _pem(rsa_key).encode())
    assert await _refused(auth, pem_forged) == "algorithm not allowed"


async def test_a_jwk_alg_restricts_the_key_to_that_algorithm(authenticator, jwks, rsa_key):
    jwks.keys = [_jwk(rsa_key, "r1", alg="RS256"), _jwk(rsa_key, "enc", use="enc")]
    auth = authenticator(mode="jwt", jwks_url=jwks.url, jwt_algorithms=["RS256", "PS256"])
    assert (await auth.identify(_signed(rsa_key, "RS256", "r1"))).user == "alice"
    assert await _refused(auth, _signed(rsa_key, "PS256", "r1")) == "algorithm not allowed"
    assert await _refused(auth, _signed(rsa_key, "RS256", "enc")) == "unknown key"


async def test_a_token_without_kid_verifies_against_a_single_key_set(authenticator, jwks, ec_key):
    jwks.keys = [_jwk(ec_key, "only")]
    auth = authenticator(mode="jwt", jwks_url=jwks.url)
    assert (await auth.identify(jwt.encode(_claims(), ec_key, "ES256"))).user == "alice"


async def test_an_unreachable_jwks_is_keys_unavailable_without_naming_the_url(
    authenticator, jwks, rsa_key, caplog
):
    jwks.status = 503
    url = jwks.url.replace("http://", "http://user:hunter2@") + "?token=abc"
    auth = authenticator(mode="jwt", jwks_url=url)
    with caplog.at_level(logging.INFO, logger="chatsock.auth"):
        reasons = [await _refused(auth, _signed(rsa_key, "RS256", "k1")) for _ in range(20)]
    assert set(reasons) == {"keys unavailable"}
    assert jwks.hits == 1, "a failing JWKS server was asked once per request"
    logged = caplog.text
    assert "JWKS" in logged
    assert "hunter2" not in logged
    assert "token=abc" not in logged


async def test_a_closed_port_is_keys_unavailable(authenticator, jwks, rsa_key):
    url = jwks.url
    await jwks.close()
    auth = authenticator(mode="jwt", jwks_url=url)
    assert await _refused(auth, _signed(rsa_key, "RS256", "k1")) == "keys unavailable"


async def test_known_keys_outlive_a_jwks_outage_for_one_more_cache_period(
    authenticator, jwks, rsa_key
):
    jwks.keys = [_jwk(rsa_key, "k1")]
    auth = authenticator(mode="jwt", jwks_url=jwks.url, jwks_cache_s=2.0)
    token = _signed(rsa_key, "RS256", "k1")
    fetched = time.monotonic()
    assert (await auth.identify(token)).user == "alice"
    jwks.status = 500
    await asyncio.sleep(2.5)
    # The cache expired and its refresh failed: the last keys still verify.
    assert (await auth.identify(token)).user == "alice"
    assert jwks.hits == 2
    assert await _outcomes_until(auth, token, "refused: keys unavailable") <= {"alice"}
    assert time.monotonic() - fetched >= 4.0, "stale keys were dropped before 2 cache periods"
    jwks.status = 200
    assert await _outcomes_until(auth, token, "alice") <= {"refused: keys unavailable"}


# -- make_token, parse_ttl, the token CLI's helpers ---------------------------------------


async def test_make_token_is_accepted_by_an_authenticator_of_the_same_config(authenticator):
    config = dict(mode="jwt", jwt_secret=SECRET, jwt_audience="chat", jwt_issuer="me")
    token = make_token(AuthConfig(**config), "alice", 3600)
    who = await authenticator(**config).identify(token)
    assert who.user == "alice"
    assert who.admin is False
    assert who.expires_at is not None
    assert 3590 <= who.expires_at - time.time() <= 3610


async def test_make_token_with_admin_claims_makes_an_admin(authenticator):
    config = AuthConfig(mode="jwt", jwt_secret=SECRET, admin_claim="role=admin")
    assert admin_claims(config) == {"role": "admin"}
    token = make_token(config, "root", 60, extra=admin_claims(config))
    who = await authenticator(mode="jwt", jwt_secret=SECRET, admin_claim="role=admin").identify(
        token
    )
    assert (who.user, who.admin) == ("root", True)


async def test_make_token_signs_with_the_configured_hmac_and_user_claim(authenticator):
    config = dict(mode="jwt", jwt_secret=SECRET, jwt_algorithms=["HS512"], user_claim="uid")
    token = make_token(AuthConfig(**config), "alice", 60)
    assert jwt.get_unverified_header(token)["alg"] == "HS512"
    assert (await authenticator(**config).identify(token)).user == "alice"


def test_make_token_needs_a_secret_long_enough():
    with pytest.raises(ValueError, match="CHATSOCK_JWT_SECRET"):
        make_token(AuthConfig(), "alice", 60)
    with pytest.raises(ValueError, match="at least 32"):
        make_token(AuthConfig(jwt_secret="short"), "alice", 60)
    with pytest.raises(ValueError, match="admin_claim is not set"):
        admin_claims(AuthConfig(jwt_secret=SECRET))


@pytest.mark.parametrize("sub", ["", "anonymous", "a\nb", "x" * 257])
def test_make_token_refuses_a_user_the_authenticator_would_refuse(sub):
    with pytest.raises(ValueError, match="--sub"):
        make_token(AuthConfig(jwt_secret=SECRET), sub, 60)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("1h", 3600),
        ("2d", 172800),
        ("3600", 3600),
        ("1.5h", 5400),
        (" 1H ", 3600),
    ],
)
def test_parse_ttl_reads_durations(text, seconds):
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "-1h", "1w", "h", "1 hour", "1h30m", "nan"])
def test_parse_ttl_refuses_anything_else(text):
    with pytest.raises(ValueError, match="expected a duration such as 90s"):
        parse_ttl(text)


# -- anonymous on a public address -----------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST", "::ffff:127.0.0.1"],
)
def test_anonymous_mode_on_loopback_starts(make_settings, host):
    assert refuse_exposed_anonymous(make_settings(server={"host": host})) is None


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "", "::", "192.168.1.5", "chat.example.com", "10.0.0.1"]
)
def test_anonymous_mode_on_a_public_address_is_refused(make_settings, host):
    message = refuse_exposed_anonymous(make_settings(server={"host": host}))
    assert message is not None
    assert "auth.allow_anonymous = true" in message
    assert 'auth.mode = "jwt"' in message


def test_anonymous_mode_on_a_public_address_starts_when_allowed_explicitly(make_settings):
    allowed = make_settings(server={"host": "0.0.0.0"}, auth={"allow_anonymous": True})
    assert refuse_exposed_anonymous(allowed) is None
    jwt_mode = make_settings(server={"host": "0.0.0.0"}, auth={"mode": "jwt", "jwt_secret": SECRET})
    assert refuse_exposed_anonymous(jwt_mode) is None
