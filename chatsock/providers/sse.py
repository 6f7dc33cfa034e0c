"""An incremental Server-Sent-Events parser over raw byte chunks.

This is the per-token hot path of every HTTP provider, so it works on bytes,
splits whole chunks at once and only decodes the `data` and `event` values it
returns. Chunks may end anywhere: mid-event, mid-line, between the CR and LF
of a CRLF, or inside a multi-byte UTF-8 character. Line terminators are
ASCII, so a complete line never ends inside a character and each line can be
decoded on its own.

Follows the WHATWG event-stream rules that matter to model APIs: `event` and
`data` fields, several `data` lines joined by "\\n", comments (`:`) and other
fields (`id`, `retry`) ignored, one leading space after the colon dropped,
LF, CRLF and CR line endings, a leading byte-order mark dropped.
"""

from __future__ import annotations

__all__ = ["SSEParser"]

_BOM = b"\xef\xbb\xbf"


class SSEParser:
    """Feed it byte chunks; each call returns the events those bytes completed.

    An event is `(event_name, data)`; `event_name` is "message" when the
    event had no `event:` field.
    """

    __slots__ = ("_buffer", "_data", "_event", "_skip_lf", "_started")

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []
        self._skip_lf = False
        self._started = False

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        """Parse `chunk` and return the events it completed, in order."""
        if self._skip_lf and chunk:
            # The previous chunk ended with a CR: an LF here completes that CRLF.
            self._skip_lf = False
            if chunk[0] == 10:
                chunk = chunk[1:]
        if self._buffer:
            chunk = self._buffer + chunk
        if not self._started:
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._buffer = chunk  # Too short to tell whether it starts with a BOM.
                return []
            self._started = True
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
        if b"\r" in chunk:
            self._skip_lf = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = chunk.split(b"\n")
        self._buffer = lines.pop()
        return self._lines(lines) if lines else []

    def _lines(self, lines: list[bytes]) -> list[tuple[str, str]]:
        events: list[tuple[str, str]] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append((self._event or "message", "\n".join(data)))
                    data.clear()
                self._event = ""
            elif line.startswith(b"data:"):
                value = line[6:] if line[5:6] == b" " else line[5:]
                data.append(value.decode("utf-8", "replace"))
            elif line.startswith(b"event:"):
                value = line[7:] if line[6:7] == b" " else line[6:]
                self._event = value.decode("utf-8", "replace")
            elif line == b"data":
                data.append("")
            # Comments (":..."), id, retry and unknown fields are ignored.
        return events

    def close(self) -> list[tuple[str, str]]:
        """End of stream: return an event left without its final blank line.

        The standard drops such an event; model servers that forget the last
        blank line (some send a bare `data: [DONE]`) are better served by
        keeping it.
        """
        tail = self._buffer
        self._buffer = b""
        return self._lines([tail, b""] if tail else [b""])
