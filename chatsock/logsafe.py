"""Log lines a client cannot forge: control characters escaped, long values cut.

Paths, ids, event names and headers reach log lines from clients. A newline in
one (`%0A` in a path decodes to one) would start a forged line; an ANSI escape
would rewrite the operator's terminal. `configure_logging` installs a formatter
that escapes every control character in the message line; `shown` quotes a
client value explicitly.

`server.log_format = "json"` writes one JSON object per line instead
(`JsonFormatter`): time, level, worker, event, stream_id, session_id, logger,
message and, for an error, its traceback as one string field.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import sys
import threading
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal

import orjson

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


# -- JSON lines ---------------------------------------------------------------------------

LogFormat = Literal["text", "json"]
ID_CHARS = 200
TRACEBACK_CHARS = 20_000
# Which stream and session the current task serves: set by `bind_stream` at the
# top of a task that serves one stream; tasks it starts inherit them.
_STREAM_ID: ContextVar[str | None] = ContextVar("chatsock_log_stream_id", default=None)
_SESSION_ID: ContextVar[str | None] = ContextVar("chatsock_log_session_id", default=None)
# Ids chatsock makes (ids.new_id): a message naming one concerns it.
_STREAM_IN_TEXT = re.compile(r"(?<![\w-])st_[\w-]{16}(?![\w-])")
_SESSION_IN_TEXT = re.compile(r"(?<![\w-])ses_[\w-]{8,124}(?![\w-])")
_PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[-#0 +]*\d*(?:\.\d+)?[a-zA-Z%]")
_WORD = re.compile(r"[a-z][a-z0-9_]*")
EVENT_WORDS = 8
# A traceback keeps its line breaks (JSON escapes them); every other control goes.
_TRACEBACK_ESCAPES = {code: text for code, text in _ESCAPES.items() if code != 0x0A}


def bind_stream(stream_id: str, session_id: str | None = None) -> None:
    """Name `stream_id` (and its session) in every JSON line logged from the current
    task and the tasks it starts: call it at the top of a task serving one stream."""
    _STREAM_ID.set(stream_id)
    _SESSION_ID.set(session_id)


def default_worker() -> str:
    """This process before the app names its worker: `<hostname>-<pid>`, the
    prefix of the id the app makes when `server.worker_id` is empty."""
    return f"{socket.gethostname()}-{os.getpid()}"


@functools.lru_cache(maxsize=1024)
def _slug(template: str) -> str:
    words = _WORD.findall(_PLACEHOLDER.sub(" ", template).lower())
    return "_".join(words[:EVENT_WORDS]) or "message"


def event_name(record: logging.LogRecord) -> str:
    """A short stable name for what `record` reports: its `event` extra, else, for
    chatsock's loggers, the logger and the words of its message template (not of
    the values), else the logger's name (libraries log preformatted text)."""
    given = getattr(record, "event", None)
    if isinstance(given, str) and given:
        return cut(escape(given), ID_CHARS)
    if record.name.split(".", 1)[0] == "chatsock" and isinstance(record.msg, str):
        return f"{record.name}:{_slug(record.msg)}"
    return record.name


def _id_field(record: logging.LogRecord, name: str, var: ContextVar[str | None]) -> str | None:
    value = getattr(record, name, None)
    if value is None:
        value = var.get()
    return None if value is None else cut(escape(str(value)), ID_CHARS)


def _utc(created: float) -> str:
    stamp = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line (orjson), fields as in docs/operations.md.

    The message is escaped and cut as `SafeFormatter` does; a traceback is one
    string field. `stream_id` and `session_id` come from the record's extras
    (`extra={"stream_id": ..., "session_id": ...}`), else from `bind_stream`,
    else from an id chatsock made that the message names; null when none."""

    def __init__(self, worker: str) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        capped = _with_capped_args(record)
        message = cut(escape(capped.getMessage()), LINE_CHARS)
        stream_id = _id_field(record, "stream_id", _STREAM_ID)
        session_id = _id_field(record, "session_id", _SESSION_ID)
        if stream_id is None and (found := _STREAM_IN_TEXT.search(message)):
            stream_id = found.group()
        if session_id is None and (found := _SESSION_IN_TEXT.search(message)):
            session_id = found.group()
        line: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "worker": self.worker,
            "event": event_name(record),
            "stream_id": stream_id,
            "session_id": session_id,
            "logger": record.name,
            "message": message,
        }
        if record.exc_info:
            line["exception"] = self._traceback(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exception"] = self._traceback(record.exc_text)
        if record.stack_info:
            line["stack"] = self._traceback(self.formatStack(record.stack_info))
        return orjson.dumps(line).decode()

    @staticmethod
    def _traceback(text: str) -> str:
        return cut(text.translate(_TRACEBACK_ESCAPES), TRACEBACK_CHARS)


def name_worker(worker_id: str) -> None:
    """Name this process's worker in every JSON line from now on: the app calls it
    once it has made the worker's id (a no-op for text logs)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, JsonFormatter):
            handler.formatter.worker = worker_id


def _log_uncaught(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    logging.getLogger("chatsock").critical("uncaught exception", exc_info=(kind, value, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None:
        _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback)


# -- set-up -------------------------------------------------------------------------------


def configure_logging(level: str, log_format: LogFormat = "text", worker: str = "") -> None:
    """Log to stderr at `level` (server.log_level), as escaped text lines or, with
    `log_format` "json", as JSON lines naming `worker` (default: `default_worker()`).

    aiohttp's access log, python-socketio's and Engine.IO's loggers all reach this
    handler: chatsock's server passes them their loggers, so they add none of their own.
    In JSON, warnings and uncaught exceptions are logged too, so stderr holds only JSON."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter(worker or default_worker()))
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread
    else:
        handler.setFormatter(SafeFormatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
