"""The incremental SSE parser: any chunking of the same bytes gives the same events."""

from __future__ import annotations

import pytest

from chatsock.providers.sse import SSEParser

OPENAI_BODY = (
    'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
    'data: {"choices":[{"delta":{"content":"Hé 世界 🎉"}}]}\n\n'
    "data: [DONE]\n\n"
).encode()

ANTHROPIC_BODY = (
    'event: message_start\ndata: {"type":"message_start"}\n\n'
    'event: ping\ndata: {"type": "ping"}\n\n'
    'event: content_block_delta\ndata: {"text":"日本語 👩‍👩‍👧"}\n\n'
    'event: message_stop\ndata: {"type":"message_stop"}\n\n'
).encode()


def parse(*chunks: bytes) -> list[tuple[str, str]]:
    parser = SSEParser()
    events: list[tuple[str, str]] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events


def test_whole_body_yields_each_event_with_its_name() -> None:
    assert parse(ANTHROPIC_BODY) == [
        ("message_start", '{"type":"message_start"}'),
        ("ping", '{"type": "ping"}'),
        ("content_block_delta", '{"text":"日本語 👩‍👩‍👧"}'),
        ("message_stop", '{"type":"message_stop"}'),
    ]


def test_unnamed_events_are_called_message() -> None:
    events = parse(OPENAI_BODY)
    assert [name for name, _ in events] == ["message"] * 3
    assert events[1][1] == '{"choices":[{"delta":{"content":"Hé 世界 🎉"}}]}'
    assert events[2][1] == "[DONE]"


@pytest.mark.parametrize("body", [OPENAI_BODY, ANTHROPIC_BODY], ids=["openai", "anthropic"])
def test_every_split_point_gives_the_same_events(body: bytes) -> None:
    expected = parse(body)
    for cut in range(1, len(body)):
        assert parse(body[:cut], body[cut:]) == expected, f"split at byte {cut}"


@pytest.mark.parametrize("body", [OPENAI_BODY, ANTHROPIC_BODY], ids=["openai", "anthropic"])
def test_one_byte_at_a_time_splits_every_multibyte_character(body: bytes) -> None:
    assert parse(*(body[i : i + 1] for i in range(len(body)))) == parse(body)


def test_split_inside_an_emoji_decodes_the_whole_character() -> None:
    body = "data: 🎉\n\n".encode()
    middle = body.index("🎉".encode()) + 2
    assert parse(body[:middle], body[middle:]) == [("message", "🎉")]


def test_events_are_returned_only_once_their_blank_line_arrives() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: one\n") == []
    assert parser.feed(b"\n") == [("message", "one")]


@pytest.mark.parametrize("newline", [b"\r\n", b"\r", b"\n"], ids=["crlf", "cr", "lf"])
def test_all_line_endings_at_every_split_point(newline: bytes) -> None:
    body = newline.join([b"event: a", b"data: x", b"data: y", b"", b"data: z", b"", b""])
    assert parse(body) == [("a", "x\ny"), ("message", "z")]
    for cut in range(1, len(body)):
        assert parse(body[:cut], body[cut:]) == [("a", "x\ny"), ("message", "z")], cut


def test_crlf_split_between_cr_and_lf_is_not_a_blank_line() -> None:
    # Were the LF read as a blank line, "a" and "b" would be two events.
    assert parse(b"data: a\r", b"\ndata: b\r\n\r\n") == [("message", "a\nb")]


def test_multiple_data_lines_are_joined_with_newlines() -> None:
    assert parse(b'data: {\ndata:  "a": 1\ndata: }\n\n') == [("message", '{\n "a": 1\n}')]


def test_only_one_space_after_the_colon_is_dropped() -> None:
    assert parse(b"data:no-space\n\ndata:  two\n\n") == [
        ("message", "no-space"),
        ("message", " two"),
    ]


def test_comments_ids_retries_and_unknown_fields_are_ignored() -> None:
    body = b": keep-alive\nid: 7\nretry: 100\nfoo: bar\ndata: x\n\n: another\n\n"
    assert parse(body) == [("message", "x")]


def test_empty_data_field_dispatches_an_empty_event() -> None:
    assert parse(b"data:\n\ndata\n\n") == [("message", ""), ("message", "")]


def test_event_name_applies_to_one_event_only() -> None:
    assert parse(b"event: ping\ndata: 1\n\ndata: 2\n\n") == [("ping", "1"), ("message", "2")]


def test_event_without_data_is_not_dispatched_and_its_name_is_forgotten() -> None:
    assert parse(b"event: ping\n\ndata: 2\n\n") == [("message", "2")]


def test_leading_byte_order_mark_is_dropped_even_when_split() -> None:
    body = b"\xef\xbb\xbfdata: x\n\n"
    assert parse(body) == [("message", "x")]
    assert parse(body[:1], body[1:2], body[2:]) == [("message", "x")]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert parse(b"data: \xff\n\n") == [("message", "\ufffd")]


def test_close_returns_an_event_missing_its_final_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: 1\n\ndata: [DONE]") == [("message", "1")]
    assert parser.close() == [("message", "[DONE]")]


def test_close_with_nothing_pending_returns_nothing() -> None:
    parser = SSEParser()
    parser.feed(b"data: 1\n\n")
    assert parser.close() == []
