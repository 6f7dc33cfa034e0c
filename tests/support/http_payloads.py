"""Hypothesis strategies for HTTP requests to the API: bodies, paths, queries, headers.

Each request carries a `Case` (tests/support/payloads.py): which of its fields
the server must refuse, and which it may.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, quote_from_bytes

import orjson
from hypothesis import strategies as st

from tests.support.payloads import (
    EVENT_FIELDS,
    MAX_SEQ,
    Case,
    any_cases,
    odd_field_cases,
    texts,
    to_json,
    valid_cases,
    valid_ids,
)

ROUTES: Final = {"/api/chat/stream": "chat_stream", "/api/chat/stream/stop": "chat_stop"}
JSON_TYPES: Final = ("application/json", "application/json; charset=utf-8", "application/x+json")
OTHER_TYPES: Final = (
    "text/plain",
    "text/json",
    "application/jsonx",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/octet-stream",
    "image/png",
)


@dataclass(frozen=True)
class Post:
    """A POST to a body-taking route."""

    path: str
    body: bytes
    content_type: str
    accept: str
    case: Case

    def __repr__(self) -> str:
        shown = self.body if len(self.body) <= 300 else self.body[:300] + b"..."
        return (
            f"Post({self.path!r}, {shown!r} ({len(self.body)} bytes), "
            f"Content-Type {self.content_type!r}, Accept {self.accept!r}, {self.case!r})"
        )


def _undecodable(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return True
    return False


_not_json = (
    st.binary(max_size=64)
    | st.sampled_from((b"", b"  \n", b"{", b"\xff\xfe{}", b'{"message":NaN}', b"[1e999]"))
    | st.just(b"x" * (1024 * 1024 + 1))  # past http.client_max_size
).filter(_undecodable)
_wrong_types = st.sampled_from(OTHER_TYPES) | st.from_regex(
    r"[a-z]{1,8}/[a-z]{1,8}", fullmatch=True
)


@st.composite
def posts(draw: st.DrawFn, path: str, kind: str) -> Post:
    """`kind`: a field of the route's request (that one field is off), "valid", "any",
    "not json" or "content type"."""
    accept = draw(st.sampled_from(("application/json", "text/event-stream", "*/*")))
    event = ROUTES[path]
    json_type = draw(st.sampled_from(JSON_TYPES))
    if kind == "not json":
        raw = draw(_not_json)
        return Post(path, raw, json_type, accept, Case(raw[:40], frozenset({"body"})))
    if kind == "content type":
        body = draw(st.sampled_from((b'{"message": "hi"}', b'{"stream_id": "st_x"}', b"hello")))
        return Post(path, body, draw(_wrong_types), accept, Case(body, frozenset({"Content-Type"})))
    if kind == "valid":
        case = draw(valid_cases(event))
    elif kind == "any":
        case = draw(any_cases(event))
    else:
        case = draw(odd_field_cases(event, kind))
    return Post(path, to_json(case.payload).encode(), json_type, accept, case)


POST_KINDS: Final = [
    (path, kind)
    for path, event in ROUTES.items()
    for kind in [*EVENT_FIELDS[event], "valid", "any", "not json", "content type"]
]


@dataclass(frozen=True)
class Get:
    """A request to a route that takes no body."""

    method: str
    url: str  # path and query, already percent-encoded
    headers: dict[str, str]
    case: Case


def _encoded(text: str | bytes) -> str:
    """Percent-encode every reserved character: a path segment or a query value."""
    if isinstance(text, bytes):
        return quote_from_bytes(text, safe="")
    return quote(text, safe="")


def _tagged(
    valid: st.SearchStrategy[Any], junk: st.SearchStrategy[Any], unsure: st.SearchStrategy[Any]
) -> st.SearchStrategy[tuple[str, Any]]:
    return st.one_of(
        valid.map(lambda v: ("valid", v)),
        junk.map(lambda v: ("junk", v)),
        unsure.map(lambda v: ("unsure", v)),
    )


_odd_texts = texts | st.binary(max_size=12)
_seqs = _tagged(
    st.integers(0, MAX_SEQ).map(str),
    st.sampled_from(("-1", str(MAX_SEQ + 1), "9" * 30, "1.5", "0x10", "1e3", "abc", "٣")),
    _odd_texts,
)
# A header value: no CR, LF or NUL (the client refuses those), Latin-1 or not.
_header_texts = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x2FF, blacklist_characters="\x7f"), max_size=24
)


def _case(**tags: tuple[str, Any] | None) -> Case:
    junk = {name for name, tag in tags.items() if tag is not None and tag[0] == "junk"}
    unsure = {name for name, tag in tags.items() if tag is not None and tag[0] == "unsure"}
    return Case(tags, frozenset(junk), frozenset(unsure))


@st.composite
def gets(draw: st.DrawFn, known_stream: str, known_session: str) -> Get:
    route = draw(st.sampled_from(("follow", "sessions", "session", "delete", "active")))
    ids = _tagged(valid_ids, st.nothing(), _odd_texts).filter(
        lambda tag: tag[1] != "active"  # a route of its own
    )
    if route == "follow":
        stream = draw(ids | st.just(("valid", known_stream)))
        after = draw(st.none() | _seqs)
        last = draw(
            st.none() | _tagged(st.integers(0, MAX_SEQ).map(str), st.nothing(), _header_texts)
        )
        url = f"/api/chat/stream/{_encoded(stream[1])}"
        if after is not None:
            url += f"?after={_encoded(after[1])}"
        headers = {} if last is None else {"Last-Event-ID": last[1]}
        if last is not None and last[1].strip():
            after = None  # Last-Event-ID wins over ?after
        # An odd id may not even match the route: "path" is named then.
        return Get(
            "GET", url, headers, _case(stream_id=stream, after=after, **{"Last-Event-ID": last})
        )
    if route == "sessions":
        limit = draw(
            st.none()
            | _tagged(
                st.integers(1, 1000).map(str),
                st.sampled_from(("0", "1001", "-5", "", " ", "ten", "1.0", "9" * 25)),
                _odd_texts,
            )
        )
        url = "/api/chat/sessions" + ("" if limit is None else f"?limit={_encoded(limit[1])}")
        return Get("GET", url, {}, _case(limit=limit))
    if route == "active":
        session = draw(
            st.none() | _tagged(valid_ids, st.sampled_from(("", "a b", "x" * 129)), _odd_texts)
        )
        url = "/api/chat/stream/active"
        if session is not None:
            url += f"?session_id={_encoded(session[1])}"
        return Get("GET", url, {}, _case(session_id=session))
    session = draw(ids)
    if session[1] == known_session:  # keep the session the usability check reads
        session = ("valid", "ses_not_the_known_one")
    method = "DELETE" if route == "delete" else "GET"
    return Get(method, f"/api/chat/sessions/{_encoded(session[1])}", {}, _case(session_id=session))
