"""Log lines a client cannot forge: control characters escaped, long values cut.

Paths, ids, event names and headers reach log lines from clients. A newline in
one (`%0A` in a path decodes to one) would start a forged line; an ANSI escape
would rewrite the operator's terminal. `configure_logging` installs a formatter
that escapes every control character in the message line; `shown` quotes a
client value explicitly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SHOWN_CHARS = 200
# Longer than `shown`'s default, so text already quoted by `shown` is not cut twice.
ARG_CHARS = 300
LINE_CHARS = 4000

_CONTROLS = [
    *range(0x00, 0x20),  # C0, including CR, LF and ESC (ANSI escapes)
    *range(0x7F, 0xA0),  # DEL and C1 (0x9B is a one-byte CSI)
    0x061C,  # bidi: arabic letter mark
    0x200E,  # bidi: left-to-right mark
    0x200F,  # bidi: right-to-left mark
    0x2028,  # line separator
    0x2029,  # paragraph separator
    *range(0x202A, 0x202F),  # bidi embeddings and overrides
    *range(0x2066, 0x206A),  # bidi isolates
]
_ESCAPES = {code: repr(chr(code))[1:-1] for code in _CONTROLS}


def escape(text: str) -> str:
    """`text` with every control character written as its Python escape (`\\n`, `\\x1b`)."""
    return text.translate(_ESCAPES)


def cut(text: str, limit: int) -> str:
    """`text`, or its first `limit` characters and how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[+{len(text) - limit} chars]"


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """A client-controlled value quoted for a log line: repr-like, escaped, cut at `limit`."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}...[+{len(text) - limit} chars]"


class _Cut:
    """An object argument whose `%s` and `%r` are cut (an exception's text can be a client's)."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return cut(str(self.value), ARG_CHARS)

    def __repr__(self) -> str:
        return cut(repr(self.value), ARG_CHARS)


def _capped(arg: Any) -> Any:
    if isinstance(arg, str):
        return cut(arg, ARG_CHARS)
    if isinstance(arg, BaseException):
        return _Cut(arg)
    return arg  # numbers must stay numbers for %d; LINE_CHARS bounds the rest


def _with_capped_args(record: logging.LogRecord) -> logging.LogRecord:
    """`record`, or a copy whose arguments are cut (the record is shared by every handler)."""
    args = record.args
    if not args:
        return record
    capped: tuple[Any, ...] | dict[str, Any]
    if isinstance(args, Mapping):
        capped = {key: _capped(value) for key, value in args.items()}
        changed = any(capped[key] is not value for key, value in args.items())
    else:
        capped = tuple(_capped(arg) for arg in args)
        changed = any(new is not old for new, old in zip(capped, args, strict=True))
    if not changed:
        return record
    copy = logging.makeLogRecord(record.__dict__)
    copy.args = capped
    return copy


class SafeFormatter(logging.Formatter):
    """Escapes control characters in the message line and cuts long arguments.

    A traceback (exc_info, stack_info) is appended as Python wrote it, one line per
    frame: only the message line is client-controlled. The arguments are cut,
    not the message template."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(_with_capped_args(record))

    def formatMessage(self, record: logging.LogRecord) -> str:
        return cut(escape(super().formatMessage(record)), LINE_CHARS)


def configure_logging(level: str) -> None:
    """Log to stderr through `SafeFormatter`, at `level` (server.log_level).

    aiohttp's access log, python-socketio's and Engine.IO's loggers all reach this
    handler: chatsock's server passes them their loggers, so they add none of their own."""
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
