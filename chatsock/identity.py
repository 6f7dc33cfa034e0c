"""Who is asking: the identity every handler checks before it touches a session."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

ANONYMOUS_USER: Final = "anonymous"


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller (or the one anonymous user of the `none` mode).

    `expires_at` is the token's `exp` (epoch seconds), None when it never expires."""

    user: str
    admin: bool = False
    expires_at: float | None = None
    # The one user of the `none` mode: every caller, so per-user limits do not
    # apply (per-IP ones do).
    anonymous: bool = False

    def owns(self, owner: str | None) -> bool:
        """Whether this caller may act on a resource of `owner` (admins act on any).
        Sessions stored before owners existed belong to the anonymous user."""
        return self.admin or (owner or ANONYMOUS_USER) == self.user


ANONYMOUS: Final = Identity(ANONYMOUS_USER, anonymous=True)


class AuthError(Exception):
    """A refused token; `reason` is fixed text safe to show the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
