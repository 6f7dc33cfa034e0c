"""Stores behind one contract; `create_store` picks the backend from settings."""

from __future__ import annotations

from typing import Any

from chatsock.config import Settings, StoreConfig
from chatsock.store.base import Store, StoreRequestError, StoreUnavailable
from chatsock.store.memory import MemoryStore
from chatsock.store.models import Registration

__all__ = ["Registration", "Store", "StoreRequestError", "StoreUnavailable", "create_store"]


def create_store(settings: Settings) -> Store:
    """The Redis store when `store.redis_url` (REDIS_URL) is set, else the memory store.
    Redis is one server, a Sentinel master (`store.redis_sentinels`) or a Cluster
    (`store.redis_cluster`)."""
    options: dict[str, Any] = {
        "prefix": settings.store.key_prefix,
        "session_ttl": settings.store.session_ttl,
        "log_ttl": settings.stream.log_ttl,
        "max_log_entries": settings.stream.max_log_entries,
        "max_messages": settings.store.max_messages_per_session,
        "max_sessions": settings.store.max_sessions,
    }
    if settings.store.redis_url:
        from chatsock.store.redis import RedisStore

        return RedisStore(
            settings.store.redis_url,
            socket_timeout=settings.store.op_timeout_s,
            max_connections=settings.store.max_connections,
            **redis_topology(settings.store),
            **options,
        )
    return MemoryStore(**options)


def redis_topology(store: StoreConfig) -> dict[str, Any]:
    """RedisStore's topology options from the `store` settings."""
    password = store.redis_sentinel_password
    return {
        "sentinels": store.sentinel_addresses(),
        "sentinel_master": store.redis_sentinel_master,
        "sentinel_password": password.get_secret_value() if password else None,
        "cluster": store.redis_cluster,
    }
