"""URLs as they may be shown, credentials masked; and what looks like a secret.

Used for Redis URLs and providers' base URLs, whose user info (`user:pass@`)
and secret-named query parameters (`password=`, `api-key=`, `sig=` ...)
never reach a log line, an error or a client, and for start-up errors, which
never print a value that looks secret.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

# Words that make a name (a config key, a query parameter, a header) look secret.
# `token` but not `tokens`: max_tokens and daily_output_tokens are counts.
_SECRET_NAME = re.compile(r"key|secret|token(?!s)|pass|pwd|credential|auth|sig", re.IGNORECASE)


# Values shaped like API keys and tokens: a vendor prefix (sk-, ghp_, xoxb-, AKIA,
# Bearer), or one long run of key characters mixing letters and digits that is
# not a path.
_KEY_PREFIX = re.compile(r"(sk|pk|rk)[-_]|gh[pousr]_|xox[abprs]-|AKIA|bearer\s", re.IGNORECASE)
_KEY_LIKE = re.compile(r"(?=[^/.])(?=.*\d)(?=.*[A-Za-z])[A-Za-z0-9_\-+/=.]{24,}")


def looks_secret_name(name: str) -> bool:
    """Whether a key, parameter or header named `name` probably holds a secret."""
    return bool(_SECRET_NAME.search(name))


def looks_like_key(value: str) -> bool:
    """Whether `value` is shaped like an API key or token, whatever it is called."""
    return bool(_KEY_PREFIX.match(value) or _KEY_LIKE.fullmatch(value))


def mask_url(url: str, *, keep_user: bool = True) -> str:
    """`url` with its password and any secret-named query value replaced by `***`;
    without `keep_user`, the whole user info is (`https://***@host/`)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        # Without a colon the user info may be a password written as a user name.
        shown = keep_user and colon and user
        netloc = f"{user}:***@{hostport}" if shown else f"***@{hostport}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(looks_secret_name(k) for k, _ in pairs):
        query = urlencode([(k, "***" if looks_secret_name(k) else v) for k, v in pairs])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def without_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """`url` without its user info, and the user name and password it held (decoded)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    bare = urlunsplit((parts.scheme, hostport, parts.path, parts.query, parts.fragment))
    return bare, unquote(user), unquote(password) if colon else None


def password_forms(url: str) -> list[str]:
    """The credentials of `url` in every form an error message may show them: the
    password (or a lone user name), the whole `user:password`, secret parameters."""
    parts = urlsplit(url)
    found = [parts.password, parts.username if parts.password is None else None]
    if parts.password is not None and parts.username:
        found.append(f"{parts.username}:{parts.password}")
    found += [v for k, v in parse_qsl(parts.query) if looks_secret_name(k)]
    return [s for raw in found if raw for s in {raw, unquote(raw), quote(raw, safe="")}]
