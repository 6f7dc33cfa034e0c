"""Hypothesis strategies for what clients send, each case knowing what the server must answer.

A case is a payload plus the fields whose value the server must refuse
(`junk`) and the fields a server-side policy may refuse or accept
(`unsure`, e.g. a model name). Every other field holds a value the request
model accepts. So a refusal with `invalid_request` must name a junk or an
unsure field, and a case with neither must not be refused as invalid.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any, Final

from hypothesis import strategies as st

from chatsock.errors import ERROR_CODES
from tests.support.clients import RecordingClient

# Bounds of chatsock's defaults (chatsock/requests.py, LimitsConfig).
MAX_MESSAGE_CHARS: Final = 32000
MAX_SYSTEM_PROMPT_CHARS: Final = 32000
MAX_HISTORY: Final = 200
MAX_ID_CHARS: Final = 128
MAX_SEQ: Final = 2**63 - 1
MAX_TOKENS_CAP: Final = 4096  # limits.max_tokens: at most this is always accepted
MAX_TOKENS_MODEL: Final = 1_000_000  # the request model's own bound

KNOWN_EVENTS: Final = ("chat_stream", "chat_stop", "session_join", "chat_resume")
_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")

# Values that have broken parsers before: the edges of int64/uint64 and doubles,
# control characters, bidi overrides, astral characters, strings at a bound.
_EDGE_INTS: Final = (0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1)
_EDGE_TEXT: Final = (
    "",
    " ",
    "\x00",
    "\n",
    "\r\n",
    "\t",
    "\x1b[31m",
    "\u202e",
    "\ufeff",
    "😀",
    "a\nb",
    "%0A",
    "../",
    "null",
    "0",
)

ints = st.integers(-(2**200), 2**200) | st.sampled_from(_EDGE_INTS)
floats = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from((-0.0, 1e308, 5e-324))
texts = st.text(max_size=24) | st.sampled_from(_EDGE_TEXT)
scalars = st.none() | st.booleans() | ints | floats | texts
json_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(texts, kids, max_size=4),
    max_leaves=12,
)
_KINDS: Final[dict[type, st.SearchStrategy[Any]]] = {
    type(None): st.none(),
    bool: st.booleans(),
    int: ints,
    float: floats,
    str: texts,
    list: st.lists(json_values, max_size=4),
    dict: st.dictionaries(texts, json_values, max_size=4),
}


def json_except(*accepted: type) -> st.SearchStrategy[Any]:
    """JSON values of none of the `accepted` types (a bool is not an int here)."""
    return st.one_of(*(strategy for kind, strategy in _KINDS.items() if kind not in accepted))


non_objects = json_except(dict)


def _long(limit: int) -> st.SearchStrategy[str]:
    """Strings just over `limit` characters, ASCII or not."""
    return st.sampled_from(("x", "é", "😀")).flatmap(
        lambda c: st.sampled_from((limit + 1, limit + 2, 2 * limit)).map(lambda n: c * n)
    )


def _at_most(limit: int) -> st.SearchStrategy[str]:
    """Strings of 1 to `limit` characters, often exactly `limit`."""
    return st.text(min_size=1, max_size=24) | st.sampled_from(("y", "é", "😀")).map(
        lambda c: c * limit
    )


def _optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


def _bad_id(optional: bool = False) -> st.SearchStrategy[Any]:
    """Never a valid session or stream id (nor null, when the id is optional)."""
    strings = (texts | _long(MAX_ID_CHARS) | st.just("abc\n")).filter(
        lambda s: _ID.fullmatch(s) is None
    )
    other_types = json_except(str, type(None)) if optional else json_except(str)
    return other_types | strings


valid_ids = st.from_regex(_ID, fullmatch=True)


@dataclass(frozen=True)
class FieldSpec:
    """The values of one field: accepted, refused, and up to the server's policy."""

    valid: st.SearchStrategy[Any]
    junk: st.SearchStrategy[Any]
    unsure: st.SearchStrategy[Any] | None = None
    required: bool = False


def _history_item_junk() -> st.SearchStrategy[Any]:
    role = st.sampled_from(("user", "assistant"))
    bad_role = json_except(str) | texts.filter(lambda v: v not in ("user", "assistant"))
    return st.one_of(
        non_objects,
        st.fixed_dictionaries({"role": bad_role, "content": texts}),
        st.fixed_dictionaries({"role": role, "content": json_except(str)}),
        st.fixed_dictionaries({"role": role}),
        st.fixed_dictionaries({"content": texts}),
    )


_history_item = st.fixed_dictionaries(
    {"role": st.sampled_from(("user", "assistant")), "content": texts},
    optional={"extra": json_values},
)


def _history_junk() -> st.SearchStrategy[Any]:
    with_bad_item = st.tuples(
        st.lists(_history_item, max_size=3), _history_item_junk(), st.integers(0, 3)
    ).map(lambda t: [*t[0][: t[2]], t[1], *t[0][t[2] :]])
    too_many = st.just([{"role": "user", "content": "h"}] * (MAX_HISTORY + 1))
    return json_except(list, type(None)) | with_bad_item | too_many


def _number_junk(low: float, high: float) -> st.SearchStrategy[Any]:
    def outside(v: float) -> bool:
        return not low <= v <= high

    return json_except(int, float, type(None)) | ints.filter(outside) | floats.filter(outside)


CHAT_STREAM: Final = {
    "message": FieldSpec(
        valid=_at_most(MAX_MESSAGE_CHARS),
        junk=json_except(str) | st.just("") | _long(MAX_MESSAGE_CHARS),
        required=True,
    ),
    "session_id": FieldSpec(valid=_optional(valid_ids), junk=_bad_id(optional=True)),
    "system_prompt": FieldSpec(
        valid=_optional(_at_most(MAX_SYSTEM_PROMPT_CHARS) | st.just("")),
        junk=json_except(str, type(None)) | _long(MAX_SYSTEM_PROMPT_CHARS),
    ),
    "history": FieldSpec(
        valid=_optional(
            st.lists(_history_item, max_size=5)
            | st.just([{"role": "assistant", "content": "h"}] * MAX_HISTORY)
        ),
        junk=_history_junk(),
    ),
    "provider": FieldSpec(
        valid=st.sampled_from((None, "fake")),
        junk=json_except(str, type(None)) | st.just("") | _long(64),
        unsure=st.text(min_size=1, max_size=64),
    ),
    "model": FieldSpec(
        valid=st.sampled_from((None, "fake-1")),
        junk=json_except(str, type(None)) | st.just("") | _long(256),
        unsure=st.text(min_size=1, max_size=256),
    ),
    "temperature": FieldSpec(
        valid=_optional(st.floats(0, 2) | st.integers(0, 2)),
        junk=_number_junk(0, 2),
    ),
    "max_tokens": FieldSpec(
        valid=_optional(st.integers(1, MAX_TOKENS_CAP)),
        # Beyond limits.max_tokens: refused or capped, as the policy says.
        unsure=st.integers(MAX_TOKENS_CAP + 1, MAX_TOKENS_MODEL),
        junk=json_except(int, type(None)) | ints.filter(lambda v: not 1 <= v <= MAX_TOKENS_MODEL),
    ),
    "client_message_id": FieldSpec(
        valid=_optional(_at_most(128)),
        junk=json_except(str, type(None)) | st.just("") | _long(128),
    ),
}

EVENT_FIELDS: Final[dict[str, dict[str, FieldSpec]]] = {
    "chat_stream": CHAT_STREAM,
    "chat_stop": {"stream_id": FieldSpec(valid=valid_ids, junk=_bad_id(), required=True)},
    "session_join": {"session_id": FieldSpec(valid=valid_ids, junk=_bad_id(), required=True)},
    "chat_resume": {
        "stream_id": FieldSpec(valid=valid_ids, junk=_bad_id(), required=True),
        "after": FieldSpec(
            valid=st.integers(0, MAX_SEQ) | st.sampled_from((0, MAX_SEQ)),
            junk=json_except(int) | ints.filter(lambda v: not 0 <= v <= MAX_SEQ),
        ),
    },
}


@dataclass(frozen=True)
class Case:
    """A payload and the fields the server must (junk) or may (unsure) refuse.

    `junk == {"payload"}` for a payload that is not an object at all."""

    payload: Any
    junk: frozenset[str] = frozenset()
    unsure: frozenset[str] = frozenset()

    def may_name(self) -> frozenset[str]:
        return self.junk | self.unsure


@st.composite
def _object_case(draw: st.DrawFn, fields: dict[str, FieldSpec], odd: str | None) -> Case:
    """Every field valid or absent (if optional), but `odd`: junk, missing or unsure.
    `odd="*"`: any field may be any of these."""
    payload: dict[str, Any] = {}
    junk: set[str] = set()
    unsure: set[str] = set()
    for name, spec in fields.items():
        if odd in (name, "*"):
            kinds = ["junk", "absent"] + (["unsure"] if spec.unsure is not None else [])
            if odd == "*":
                kinds.append("valid")
            kind = draw(st.sampled_from(kinds))
        elif spec.required:
            kind = "valid"
        else:
            kind = draw(st.sampled_from(("valid", "absent")))
        if kind == "absent":
            if spec.required:
                junk.add(name)
        elif kind == "valid":
            payload[name] = draw(spec.valid)
        elif kind == "junk":
            payload[name] = draw(spec.junk)
            junk.add(name)
        else:
            assert spec.unsure is not None
            payload[name] = draw(spec.unsure)
            unsure.add(name)
    # Unknown keys are ignored, whatever they hold.
    extra = draw(st.dictionaries(texts.filter(lambda k: k not in fields), json_values, max_size=3))
    return Case({**extra, **payload}, frozenset(junk), frozenset(unsure))


def valid_cases(event: str) -> st.SearchStrategy[Case]:
    """Objects the request model accepts (unknown keys included)."""
    return _object_case(EVENT_FIELDS[event], None)


def odd_field_cases(event: str, name: str) -> st.SearchStrategy[Case]:
    """Objects with one field junk, missing or up to the policy, the others valid."""
    return _object_case(EVENT_FIELDS[event], name)


def any_cases(event: str) -> st.SearchStrategy[Case]:
    """Anything: objects with any mix of fields, or not an object at all."""
    not_object = non_objects.map(lambda v: Case(v, frozenset({"payload"})))
    return _object_case(EVENT_FIELDS[event], "*") | not_object


FIELDS: Final = [(event, name) for event, fields in EVENT_FIELDS.items() for name in fields]


unknown_events = st.sampled_from(
    ("connect", "disconnect", "message", "CHAT_STREAM", "chat_stream ", "on_chat_stream", "*", "")
) | st.text(max_size=40).filter(lambda e: e not in KNOWN_EVENTS)


def named_field(message: str) -> str:
    """The first path segment an error message names: `history.0.role: ...` -> history."""
    return message.split(":", 1)[0].split(".", 1)[0]


def check_refusal(case: Case, error: Any, *, also: frozenset[str] = frozenset()) -> None:
    """An error of the protocol's shape. An `invalid_request` names a field the case
    may have wrong; a case with junk gets `invalid_request`, unless the transport
    refused it before looking at any field (`also`: an HTTP route that did not match)."""
    assert isinstance(error, dict), error
    assert error.get("code") in ERROR_CODES, error
    assert isinstance(error.get("message"), str), error
    named = named_field(error["message"])
    if error["code"] == "invalid_request":
        assert named in case.may_name() | also, f"{case!r} got {error!r}"
    elif named not in also:
        assert not case.junk, f"{case!r} has junk but got {error!r}"


def to_json(value: Any) -> str:
    """Standard JSON (no NaN), characters unescaped so a payload at a length bound
    stays well under the server's size limit. It writes any int, where the
    client's own encoder (the server's orjson, set process-wide) stops at 64 bits."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


CLOSED: Final = object()  # what `send_event` returns when the server closed the socket


async def send_event(client: RecordingClient, json_text: str, within: float = 10) -> Any:
    """Send `json_text` (an event array, or anything) as one EVENT packet with an ack
    id; the ack's value, or CLOSED if the server closed the socket instead.

    AssertionError if neither happens `within` seconds."""
    loop = asyncio.get_running_loop()
    acked: asyncio.Future[tuple[Any, ...]] = loop.create_future()

    def on_ack(*data: Any) -> None:
        if not acked.done():
            acked.set_result(data)

    ack_id = client.sio._generate_ack_id("/", on_ack)
    closed: asyncio.Future[Any] = loop.create_task(client.disconnected.wait())
    try:
        await client.sio.eio.send(f"2{ack_id}{json_text}")
        waiting: set[asyncio.Future[Any]] = {acked, closed}
        done, _ = await asyncio.wait(waiting, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        closed.cancel()
        await asyncio.gather(closed, return_exceptions=True)
        client.sio.callbacks.get("/", {}).pop(ack_id, None)
    assert done, f"no ack and no disconnect for {json_text[:300]!r}"
    if acked not in done:
        return CLOSED
    data = acked.result()
    assert len(data) == 1, data
    return data[0]


async def emit_raw(client: RecordingClient, args: list[Any], within: float = 10) -> Any:
    """Send `args` (event name first) as one EVENT packet; the ack's value.

    AssertionError if no ack arrives, or the server closes the socket."""
    reply = await send_event(client, to_json(args), within)
    assert reply is not CLOSED, f"the server closed the socket on {to_json(args)[:300]!r}"
    return reply
