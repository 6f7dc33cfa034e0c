"""The store's keyspace: its settings and the names of its keys."""

from __future__ import annotations

from chatsock.identity import ANONYMOUS_USER
from chatsock.store.primitives import Primitives

# Every key of a session and of a stream, by its parts after the id.
SESSION_KEYS = [(), ("messages",), ("message_ids",), ("cmids",), ("cmid_order",),
                ("active",), ("present",), ("streams",)]  # fmt: skip
STREAM_KEYS = [(), ("log",), ("end",), ("closer",), ("stop",), ("lease",)]


class Keyspace(Primitives):
    """Where a store keeps what, and for how long; shared by `Store` and the backends."""

    def __init__(
        self,
        *,
        prefix: str = "chatsock",
        session_ttl: int = 30 * 24 * 3600,
        log_ttl: int = 3600,
        max_log_entries: int = 20000,
        max_messages: int = 1000,
        max_sessions: int | None = None,
        hash_tag: bool = False,
    ) -> None:
        """`hash_tag` (Redis Cluster): every key starts with `{prefix}`, so all of
        them hash to one slot and each script, transaction and multi-key read
        stays on one node."""
        self.prefix = prefix
        self._head = f"{{{prefix}}}" if hash_tag else prefix
        self.session_ttl = session_ttl or None
        self.log_ttl = log_ttl
        self.max_log_entries = max_log_entries
        self.max_messages = max_messages
        self.max_sessions = max_sessions

    def _k(self, *parts: str) -> str:
        return ":".join((self._head, *parts))

    def _sk(self, session_id: str, *parts: str) -> str:
        return self._k("session", session_id, *parts)

    def _tk(self, stream_id: str, *parts: str) -> str:
        return self._k("stream", stream_id, *parts)

    def _uk(self, user: str | None, *parts: str) -> str:
        """A key of one user (a session's owner; None: the anonymous user)."""
        return self._k("user", user or ANONYMOUS_USER, *parts)

    @property
    def _keep_ttl(self) -> int | None:
        """TTL of a session's stream list and acks: as long as the session, and
        never shorter than the stream keys they lead to (None: no expiry)."""
        return max(self.session_ttl, self.log_ttl) if self.session_ttl else None
