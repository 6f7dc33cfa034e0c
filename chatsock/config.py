"""Settings: config.toml, overridden by environment variables, validated at start-up.

Precedence, highest first: explicit overrides (tests, CLI flags), the fixed
environment names (`REDIS_URL`, `CHATSOCK_PROVIDERS`,
`CHATSOCK_DEMO_TOKENS_PER_SECOND`), `CHATSOCK_<SECTION>__<KEY>` variables,
then the TOML file named by `--config` or `CHATSOCK_CONFIG`.
"""

from __future__ import annotations

import os
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from chatsock.timing import TimingError, check_timing

DEFAULT_CONFIG = Path("config.toml")


class ConfigError(Exception):
    """Start-up configuration is invalid; the message names the key and what is expected."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    cors_allowed_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed for Socket.IO and the HTTP API; [] = same origin, ['*'] any.",
    )
    worker_id: str = Field("", description="Identifies this worker in stream ownership.")
    shutdown_grace_s: float = Field(
        5.0, ge=0, description="After the drain: how long streams still running get to end."
    )
    backlog: int = Field(
        1024,
        ge=1,
        description="Connections the kernel queues before the worker accepts them "
        "(capped by net.core.somaxconn); aiohttp's 128 overflows under a reconnect storm.",
    )
    drain_timeout_s: float = Field(
        60.0,
        ge=0,
        description="On SIGTERM: how long the worker keeps generating its streams (and, "
        "with Redis, hands its clients to other workers) before ending the rest with "
        "server_shutdown. It exits within drain_timeout_s + shutdown_grace_s + 1 s.",
    )
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        "auto", description="auto: uvloop when it is installed, else asyncio's own loop."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = Field(
        "text",
        description="text: one escaped line per record; json: one JSON object per line with "
        "time, level, worker, event, stream_id, session_id and message (docs/operations.md).",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header values served (DNS rebinding); [] = loopback names when "
        "bound to loopback, else any; ['*'] any.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Peer addresses or CIDRs whose X-Forwarded-For names the client IP.",
    )
    metrics_token: SecretStr | None = Field(
        None, description="When set, /metrics needs `Authorization: Bearer <token>`."
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Serve /metrics on this port only (not on `port`)."
    )
    max_send_queue: int = Field(
        1000,
        ge=1,
        description="Packets queued for one Socket.IO connection whose peer does not read "
        "(past the socket buffers); one more and it is disconnected (it may reconnect and "
        "resume).",
    )
    max_send_queue_bytes: int = Field(
        256 * 1024,
        ge=1024,
        description="The same bound in bytes (text plus ~160 bytes per packet).",
    )
    send_timeout_s: float = Field(
        10.0,
        gt=0,
        description="The longest one WebSocket write or close may wait for a peer that does "
        "not read; then the connection is dropped.",
    )


class StoreConfig(_Section):
    redis_url: str = Field("", description="Empty means the in-memory store.")
    key_prefix: str = Field("chatsock", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    session_ttl: int = Field(30 * 24 * 3600, ge=0, description="Seconds; 0 = never expire.")
    max_messages_per_session: int = Field(1000, ge=2)
    max_sessions: int = Field(
        10000,
        ge=1,
        description="Sessions kept per owner; an owner's least recently updated are evicted.",
    )
    op_timeout_s: float = Field(5.0, gt=0)
    max_connections: int = Field(
        64,
        ge=2,
        description="Redis connections per worker for commands; under load a command "
        "waits for a free one (up to op_timeout_s) instead of opening more.",
    )
    redis_sentinels: list[str] = Field(
        default_factory=list,
        description="Redis Sentinel addresses, `host:port`. REDIS_URL then gives the "
        "master's password, database and TLS (rediss://), not its host.",
    )
    redis_sentinel_master: str = Field(
        "", description="With redis_sentinels: the master's name (`sentinel monitor <name>`)."
    )
    redis_sentinel_password: SecretStr | None = Field(
        None, description="The sentinels' own password (their requirepass), if they have one."
    )
    redis_cluster: bool = Field(
        False,
        description="REDIS_URL names one node of a Redis Cluster. Every key carries the "
        "hash tag {key_prefix}, so chatsock's keys live on one shard.",
    )

    @model_validator(mode="after")
    def _topology_agrees(self) -> StoreConfig:
        for address in self.redis_sentinels:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    f"store.redis_sentinels: {address!r} is not host:port (e.g. 10.0.0.5:26379)"
                )
        if self.redis_sentinels and not self.redis_sentinel_master:
            raise ValueError(
                "store.redis_sentinel_master: needed with store.redis_sentinels "
                "(the name in the sentinels' `sentinel monitor <name> ...`)"
            )
        if self.redis_sentinel_master and not self.redis_sentinels:
            raise ValueError(
                "store.redis_sentinels: needed with store.redis_sentinel_master "
                "(the sentinels' host:port list)"
            )
        if self.redis_cluster and self.redis_sentinels:
            raise ValueError(
                "store.redis_cluster: cannot be combined with store.redis_sentinels "
                "(a cluster fails over by itself); set one of them"
            )
        mode = "redis_cluster" if self.redis_cluster else "redis_sentinels"
        if (self.redis_cluster or self.redis_sentinels) and not self.redis_url:
            raise ValueError(
                f"store.redis_url (REDIS_URL): needed with store.{mode}, for the password, "
                "database and TLS, e.g. redis://:password@redis/0 or rediss://..."
            )
        if self.redis_cluster or self.redis_sentinels:
            parts = urlsplit(self.redis_url)
            if parts.scheme not in ("redis", "rediss"):
                raise ValueError(
                    f"store.redis_url (REDIS_URL): store.{mode} needs a redis:// or "
                    f"rediss:// URL, not {parts.scheme or 'no scheme'}"
                )
            if self.redis_cluster and parts.path.strip("/") not in ("", "0"):
                raise ValueError("store.redis_url (REDIS_URL): a Redis Cluster has only database 0")
        return self

    def sentinel_addresses(self) -> tuple[tuple[str, int], ...]:
        """`redis_sentinels` as (host, port) pairs."""
        pairs = (address.rpartition(":") for address in self.redis_sentinels)
        return tuple((host.strip("[]"), int(port)) for host, _, port in pairs)


class StreamConfig(_Section):
    flush_interval_ms: int = Field(20, ge=0, le=5000)
    flush_max_chars: int = Field(512, ge=1)
    stop_on_disconnect: bool = False
    log_ttl: int = Field(3600, ge=1, description="Seconds a stream's token log is kept.")
    max_log_entries: int = Field(20000, ge=1)
    lease_s: float = Field(10.0, gt=0)


class LimitsConfig(_Section):
    max_message_chars: int = Field(32000, ge=1)
    max_streams_per_session: int = Field(1, ge=1)
    max_history_messages: int = Field(200, ge=0)
    max_system_prompt_chars: int = Field(32000, ge=0)
    max_prompt_chars: int = Field(
        200_000, ge=1, description="Message plus history plus system prompt, in characters."
    )
    max_tokens: int = Field(4096, ge=1, description="The most output tokens a client may ask.")
    max_thinking_budget: int = Field(
        16000,
        ge=0,
        description="The largest `thinking_budget` (tokens) a client may ask; 0 = none.",
    )
    allow_system_prompt: bool = True
    allow_client_history: bool = True
    max_streams_per_user: int = Field(3, ge=1)
    stream_starts_per_minute: int = Field(
        30, ge=0, description="chat_stream starts per user and per client IP; 0 = unlimited."
    )
    socket_events_per_second: float = Field(20.0, ge=0, description="0 = unlimited.")
    socket_events_burst: int = Field(40, ge=1)
    connections_per_ip: int = Field(50, ge=0, description="0 = unlimited.")
    daily_output_tokens: int = Field(
        0, ge=0, description="Output tokens per user per UTC day; 0 = no budget."
    )


JWT_HMAC = ("HS256", "HS384", "HS512")
JWT_ASYMMETRIC = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


class AuthConfig(_Section):
    """`[auth]`: who is asking. These names are fixed (docs/security.md)."""

    mode: Literal["none", "jwt"] = "none"
    jwt_secret: SecretStr | None = None
    jwt_public_key: SecretStr | None = Field(None, description="A PEM, for RS/PS/ES/EdDSA.")
    jwks_url: str | None = None
    jwt_algorithms: list[str] = Field(
        default_factory=list,
        description="Accepted algorithms; [] = HS256 with a secret, else RS256/ES256/EdDSA.",
    )
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    leeway_s: float = Field(0.0, ge=0, le=600)
    user_claim: str = Field("sub", min_length=1)
    admin_claim: str | None = Field(None, description="`claim=value`, e.g. `role=admin`.")
    allow_anonymous: bool = Field(False, description="Allow `none` mode on a non-loopback address.")
    jwks_cache_s: float = Field(300.0, gt=0)

    @model_validator(mode="after")
    def _keys_agree(self) -> AuthConfig:
        if self.admin_claim is not None and "=" not in self.admin_claim:
            raise ValueError("auth.admin_claim: expected `claim=value`, e.g. `role=admin`")
        for alg in self.jwt_algorithms:
            if alg not in JWT_HMAC + JWT_ASYMMETRIC:
                raise ValueError(
                    f"auth.jwt_algorithms: {alg!r} is not accepted "
                    f"(use {', '.join(JWT_HMAC + JWT_ASYMMETRIC)})"
                )
        if self.mode != "jwt":
            return self
        given = [
            name
            for name, value in (
                ("jwt_secret", self.jwt_secret),
                ("jwt_public_key", self.jwt_public_key),
                ("jwks_url", self.jwks_url),
            )
            if value
        ]
        if len(given) != 1:
            raise ValueError(
                "auth: the jwt mode needs exactly one of auth.jwt_secret "
                "(CHATSOCK_JWT_SECRET), auth.jwt_public_key or auth.jwks_url"
                + (f"; got {', '.join(given)}" if given else "")
            )
        hmac = given[0] == "jwt_secret"
        wrong = [a for a in self.algorithms() if (a in JWT_HMAC) != hmac]
        if wrong:
            kind = "a shared secret" if hmac else "a public key"
            raise ValueError(
                f"auth.jwt_algorithms: {', '.join(wrong)} cannot be used with {kind} "
                "(algorithm confusion)"
            )
        return self

    def algorithms(self) -> list[str]:
        if self.jwt_algorithms:
            return list(self.jwt_algorithms)
        return ["HS256"] if self.jwt_secret else ["RS256", "ES256", "EdDSA"]


class DemoConfig(_Section):
    tokens_per_second: float = Field(40.0, gt=0, le=100000)
    model: str = "demo-1"


class HttpConfig(_Section):
    sse_heartbeat_s: float = Field(15.0, gt=0)
    client_max_size: int = Field(1024 * 1024, ge=1024)
    sse_write_timeout_s: float = Field(
        10.0,
        gt=0,
        description="The longest one SSE write may wait for a client that does not read; "
        "then the response is closed (the client resumes with Last-Event-ID).",
    )
    aisdk_resume_grace_s: float = Field(
        2.0,
        ge=0,
        le=600,
        description="A useChat response (/api/aisdk/chat) whose client went away before the "
        "end (stop(), a closed tab, a dropped connection) stops its stream this long "
        "after, unless the chat was resumed meanwhile on any worker; 0 stops at once.",
    )


class ProviderConfig(_Section):
    """One named provider: `[providers.<name>]` in config.toml."""

    kind: Literal["openai", "anthropic", "demo"]
    base_url: str | None = None
    api_key: SecretStr | None = None
    api_key_env: str | None = Field(None, description="Name of an env var holding the key.")
    model: str | None = None
    first_token_timeout: float = Field(30.0, gt=0)
    idle_timeout: float = Field(60.0, gt=0)
    connect_timeout: float = Field(10.0, gt=0)
    max_retries: int = Field(2, ge=0, le=10)
    headers: dict[str, str] = Field(default_factory=dict)
    models: list[str] = Field(
        default_factory=list,
        description="Models a client may pick; [] = only `model`, ['*'] = any.",
    )
    thinking_budget: int | None = Field(
        None,
        ge=1024,
        description="Anthropic extended thinking: the reasoning budget in tokens when a "
        "request names none (the demo provider reasons too).",
    )
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = Field(
        None,
        description="OpenAI reasoning models: the effort when a request names none "
        "(the demo provider reasons too).",
    )

    def resolved_api_key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        return None


class Settings(BaseSettings):
    """All of chatsock's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="CHATSOCK_",
        env_nested_delimiter="__",
        extra="forbid",
        toml_file=None,
    )

    server: ServerConfig = Field(default_factory=ServerConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    chain: list[str] = Field(
        default_factory=list,
        description="Provider order; CHATSOCK_PROVIDERS. Empty: those with keys, else demo.",
    )
    static_dir: Path | None = Field(
        None, description="The page's files; None = those shipped in the package."
    )

    @field_validator("chain", mode="before")
    @classmethod
    def _split_chain(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _timings_agree(self) -> Settings:
        try:
            check_timing(lease_s=self.stream.lease_s, log_ttl=self.stream.log_ttl)
        except TimingError as exc:
            raise ValueError(str(exc)) from None
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            _FixedEnvNames(settings_cls),
            _PrefixedEnv(settings_cls),
            TomlConfigSettingsSource(settings_cls),
        )


class _PrefixedEnv(EnvSettingsSource):
    """CHATSOCK_<SECTION>__<KEY>, minus the fixed names that mean something else."""

    _RESERVED = ("chatsock_providers", "chatsock_config", "chatsock_jwt_secret")

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self.env_vars = {k: v for k, v in self.env_vars.items() if k.lower() not in self._RESERVED}

    def decode_complex_value(self, field_name: str, field: FieldInfo | None, value: Any) -> Any:
        """JSON, as pydantic-settings reads it; a list of strings may also be
        comma-separated (CHATSOCK_SERVER__CORS_ALLOWED_ORIGINS=http://a,http://b)."""
        try:
            return super().decode_complex_value(field_name, field, value)  # type: ignore[arg-type]
        except ValueError:
            if field is None or not isinstance(value, str) or not _is_str_list(field.annotation):
                raise
            return [item.strip() for item in value.split(",") if item.strip()]


def _is_str_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list and typing.get_args(annotation) == (str,)


class _FixedEnvNames(PydanticBaseSettingsSource):
    """The environment names users and deployment files rely on (README)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        env = os.environ
        if "REDIS_URL" in env:
            out["store"] = {"redis_url": env["REDIS_URL"]}
        if env.get("CHATSOCK_PROVIDERS"):
            out["chain"] = env["CHATSOCK_PROVIDERS"]
        if env.get("CHATSOCK_JWT_SECRET"):
            out["auth"] = {"jwt_secret": env["CHATSOCK_JWT_SECRET"]}
        if env.get("CHATSOCK_DEMO_TOKENS_PER_SECOND"):
            out["demo"] = {"tokens_per_second": env["CHATSOCK_DEMO_TOKENS_PER_SECOND"]}
        return out


def _describe(error: Any) -> str:
    """One line for a validation error: the key, what is wrong, and the value given,
    unless that value may be a secret (see `_shown_input`)."""
    path = [str(part) for part in error["loc"]]
    got = error.get("input")
    shown = "" if isinstance(got, dict) else f" (got {_shown_input(path, got)})"
    line = f"{'.'.join(path) or '(root)'}: {error['msg']}{shown}"
    if len(path) == 2 and path[1] == "chain":  # TOML: a key under [section] belongs to it
        line += "; `chain` is a top-level key: put it above the first [section] of the file"
    return line


def _shown_input(path: list[str], value: object) -> str:
    """`value` as a start-up error may print it: '***' when the key (below its
    section, so not every `auth.*` key) names a secret or the value looks like
    one; a URL with its user info and secret parameters masked."""
    # Imported here: chatsock.store imports this module.
    from chatsock.store.urls import looks_like_key, looks_secret_name, mask_url

    if any(looks_secret_name(part) for part in path[1:]):
        return "'***'"
    if isinstance(value, str):
        if "://" in value:
            return repr(mask_url(value, keep_user=False))
        if looks_like_key(value):
            return "'***'"
    return repr(value)


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Load and validate settings; raise ConfigError naming every bad key."""
    chosen = path or os.environ.get("CHATSOCK_CONFIG")
    toml_path: Path | None = Path(chosen) if chosen else None
    if toml_path is None and DEFAULT_CONFIG.is_file():
        toml_path = DEFAULT_CONFIG
    if toml_path is not None:
        if not toml_path.is_file():
            raise ConfigError(
                f"config file {toml_path} does not exist: fix --config/CHATSOCK_CONFIG"
            )
        try:
            tomllib.loads(toml_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {toml_path} is not valid TOML: {exc}") from exc

    class _FromFile(Settings):
        model_config = SettingsConfigDict(toml_file=toml_path)

    try:
        return _FromFile(**overrides)
    except SettingsError as exc:
        raise ConfigError(
            f"an environment value could not be read ({exc}): a table or a list in a "
            "CHATSOCK_* variable is JSON, e.g. CHATSOCK_SERVER__ALLOWED_HOSTS='[\"a.example\"]'"
        ) from exc
    except ValidationError as exc:
        lines = "\n  ".join(_describe(err) for err in exc.errors())
        where = f" in {toml_path} or the environment" if toml_path else " in the environment"
        raise ConfigError(f"invalid configuration{where}:\n  {lines}") from exc
