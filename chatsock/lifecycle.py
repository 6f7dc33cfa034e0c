"""The life of one stream its runner owns: a small state machine with typed end reasons.

    STARTING --begin--> STREAMING --end(reason)--> FINISHING --close--> ENDED
        \\______________end(reason)______________/

`end()` decides how the stream ends, once: the first caller wins and later
callers are told they lost. The one exception is `undelivered()`: text that
could not be logged turns any end into STORE_UNAVAILABLE. The provider finishing is itself an end
(`COMPLETE`), so a stop or a shutdown that arrives after the provider has
finished (or has sent its finish reason: runner.py `_stop`) changes nothing:
the reply is complete and the stop is answered `stopped: false`. A stop
before the task first runs ends the stream before it reads anything.
"""

from __future__ import annotations

import enum

from chatsock.errors import ChatsockError
from chatsock.providers.base import ProviderError

Failure = ChatsockError | ProviderError


class Phase(enum.Enum):
    STARTING = "starting"  # registered; the task has not run yet
    STREAMING = "streaming"  # the provider chain is being read
    FINISHING = "finishing"  # the end is decided; flushing, persisting, recording
    ENDED = "ended"  # the terminal event was sent


class EndReason(enum.Enum):
    COMPLETE = "complete"  # the provider finished the reply
    STOPPED = "stopped"  # chat_stop, a stop flag, or nobody following
    SHUTDOWN = "server_shutdown"  # this worker is shutting down
    FAILED = "failed"  # the provider chain failed; `failure` says how
    STORE_UNAVAILABLE = "store_unavailable"  # the token log could not be written
    INTERNAL = "internal"  # a bug; logged with its traceback
    TAKEN = "taken"  # another worker took it for lost (our lease lapsed); relay its end


_CLEAN = frozenset({EndReason.COMPLETE, EndReason.STOPPED, EndReason.SHUTDOWN, EndReason.TAKEN})


class Lifecycle:
    """Where a stream is in its life, and why it ended."""

    __slots__ = ("failure", "phase", "reason")

    def __init__(self) -> None:
        self.phase = Phase.STARTING
        self.reason: EndReason | None = None
        self.failure: Failure | None = None

    @property
    def streaming(self) -> bool:
        return self.phase is Phase.STREAMING

    @property
    def open(self) -> bool:
        """The end is not decided yet."""
        return self.reason is None

    def begin(self) -> bool:
        """STARTING -> STREAMING; False when the stream was ended before it began."""
        if self.phase is not Phase.STARTING:
            raise RuntimeError(f"begin() in phase {self.phase.value}")
        if self.reason is not None:
            self.phase = Phase.FINISHING
            return False
        self.phase = Phase.STREAMING
        return True

    def end(self, reason: EndReason, failure: Failure | None = None) -> bool:
        """Decide the end; True for the call that decided it, False once it is decided."""
        if self.reason is not None:
            return False
        if reason in _CLEAN and failure is not None:
            raise ValueError(f"a {reason.value} end carries no failure")
        if reason is EndReason.FAILED and failure is None:
            raise ValueError("a failed end carries its failure")
        self.reason = reason
        self.failure = failure
        if self.phase is Phase.STREAMING:
            self.phase = Phase.FINISHING
        return True

    def undelivered(self, failure: ChatsockError) -> None:
        """Text could not be written to the token log (the store stayed away): the
        stream ends with STORE_UNAVAILABLE whatever was decided before, because
        what the provider said did not reach the followers."""
        self.reason = EndReason.STORE_UNAVAILABLE
        self.failure = failure
        if self.phase is not Phase.ENDED:
            self.phase = Phase.FINISHING

    def close(self) -> None:
        """The terminal event was sent (or could not be): the stream is over."""
        if self.reason is None:
            self.reason = EndReason.INTERNAL
        self.phase = Phase.ENDED
