"""Redis URLs as they may be shown: passwords masked."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit


def mask_url(url: str) -> str:
    """`url` with any password (in the user info or the query) replaced by `***`."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        # Without a colon the user info may be a password written as a user name.
        netloc = f"{user}:***@{hostport}" if colon and user else f"***@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def password_forms(url: str) -> list[str]:
    """The password of `url` in every form an error message may show it."""
    parts = urlsplit(url)
    found = [parts.password, parts.username if parts.password is None else None]
    found += [v for k, v in parse_qsl(parts.query) if k.lower() == "password"]
    return [s for raw in found if raw for s in {raw, unquote(raw), quote(raw, safe="")}]
