"""The worker's event loop: uvloop when it is installed (`server.event_loop`)."""

from __future__ import annotations

import asyncio
import importlib
import logging
from typing import Literal

log = logging.getLogger(__name__)

LoopChoice = Literal["auto", "asyncio", "uvloop"]


def new_event_loop(choice: LoopChoice) -> asyncio.AbstractEventLoop:
    """A new loop of the chosen kind; "uvloop" when it is missing is an error."""
    if choice != "asyncio":
        try:
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            if choice == "uvloop":
                raise RuntimeError(
                    'server.event_loop is "uvloop" but uvloop is not installed '
                    "(pip install uvloop), or set it to auto"
                ) from None
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            log.info("event loop: uvloop %s", uvloop.__version__)
            return loop
    log.info("event loop: asyncio")
    return asyncio.new_event_loop()
