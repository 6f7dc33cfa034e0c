"""aiohttp's server logger for chatsock: a client's malformed request is one line.

aiohttp refuses a request it cannot parse (bytes that are not HTTP, a bad
header, invalid UTF-8 in the request line) before any handler or middleware
runs, and logs it at ERROR with a full traceback; so is a response the
client left before it could be written. That is the client's doing, not the
server's: one INFO line says what happened; real server errors still get
their traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web_response
from aiohttp.http_exceptions import HttpProcessingError

from chatsock.logsafe import shown


class RequestErrors(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Passed to aiohttp as `handler_args={"logger": ...}`."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            peer = args[0] if args else None
            self.logger.info(
                "malformed request from %s refused: %s %s",
                shown(peer),
                exc_info.code,
                shown(exc_info.message, 120),
            )
            return
        if isinstance(exc_info, ConnectionResetError):
            # The client left before its response could be written: a WebSocket
            # handshake abandoned after a connect timeout, a closed tab. Its doing,
            # and routine on a busy server: one line, no traceback.
            self.logger.info("a client left before its response was written: %s", exc_info)
            return
        self.logger.error(msg, *args, exc_info=exc_info, **kw)


def hide_server_version() -> None:
    """aiohttp answers a request it could not parse before any chatsock code (or
    the `Server`-dropping response signal) runs, naming itself and its version in
    `Server`. That default is a module global of aiohttp's: it is set here, once
    per process, to a name without a version."""
    web_response.SERVER_SOFTWARE = "chatsock"  # type: ignore[attr-defined]
