"""Identifiers: URL-safe, unguessable, valid as session/stream ids."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    # token_urlsafe only yields [A-Za-z0-9_-], which the id pattern accepts.
    return f"{prefix}_{secrets.token_urlsafe(12)}"
