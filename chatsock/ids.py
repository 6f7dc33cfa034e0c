"""Identifiers: URL-safe, unguessable, valid as session/stream ids."""

from __future__ import annotations

import base64
import hashlib
import secrets


def new_id(prefix: str) -> str:
    # token_urlsafe only yields [A-Za-z0-9_-], which the id pattern accepts.
    return f"{prefix}_{secrets.token_urlsafe(12)}"


def derived_id(prefix: str, *parts: str) -> str:
    """A stable id for `parts`: the same inputs always give the same id, so a
    write keyed by it stays idempotent across retries of a whole request."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=12).digest()
    return f"{prefix}_{base64.urlsafe_b64encode(digest).decode()}"
