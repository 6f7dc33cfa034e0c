"""What a worker may hold for one Socket.IO connection that does not read.

A peer that stops reading fills its kernel receive window, then the worker's
socket buffer, then aiohttp's transport buffer; past that `ws.send` waits for
a drain that never comes, and Engine.IO's per-socket queue (unbounded) takes
every later packet. `SendQueue` counts what that queue holds, so the socket
(sio_server.py) can disconnect the peer at `SendLimits` instead of growing
without bound; the client reconnects and resumes from the token log.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from chatsock.config import Settings

# Python's own cost of one queued Engine.IO packet besides its text (the packet
# object and its str header), measured with tracemalloc: ~270 bytes for a
# 100-character chat_token.
PACKET_OVERHEAD: Final = 160


@dataclass(frozen=True)
class SendLimits:
    """Per connection: queued packets and bytes, and the longest one write may wait."""

    packets: int = 1000
    bytes: int = 256 * 1024
    timeout_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> SendLimits:
        server = settings.server
        return cls(server.max_send_queue, server.max_send_queue_bytes, server.send_timeout_s)


def packet_bytes(pkt: Any) -> int:
    """What one queued Engine.IO packet costs (None, the writer's stop mark: nothing)."""
    if pkt is None:
        return 0
    data = getattr(pkt, "data", None)
    return PACKET_OVERHEAD + (len(data) if isinstance(data, str | bytes) else 0)


class SendQueue(asyncio.Queue[Any]):
    """Engine.IO's per-socket send queue, keeping a count of the bytes it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    # asyncio.Queue's own hooks: every put and get goes through them.
    def _put(self, item: Any) -> None:
        super()._put(item)
        self.bytes += packet_bytes(item)

    def _get(self) -> Any:
        item = super()._get()
        self.bytes -= packet_bytes(item)
        return item

    def over(self, limits: SendLimits) -> bool:
        """Whether one more packet is too many. Only what is queued counts: one packet
        larger than the byte bound (a long reply's chat_complete) still goes out."""
        return self.qsize() >= limits.packets or self.bytes >= limits.bytes

    def discard(self) -> int:
        """Drop everything queued (each marked done, so `join()` still returns)."""
        dropped = 0
        while not self.empty():
            self.get_nowait()
            self.task_done()
            dropped += 1
        return dropped
