"""Per-address and per-socket limits off in tests that are not about them.

Every test client comes from 127.0.0.1, so the defaults (30 starts a minute
per IP, 50 connections per IP, 20 events a second per socket) would throttle
tests that run many streams. Tests of the limits set them explicitly.
"""

from __future__ import annotations

from typing import Final

RELAXED_LIMITS: Final = {
    "stream_starts_per_minute": 0,
    "connections_per_ip": 0,
    "socket_events_per_second": 0,
}
RELAXED_ENV: Final = {
    f"CHATSOCK_LIMITS__{key.upper()}": str(value) for key, value in RELAXED_LIMITS.items()
}
