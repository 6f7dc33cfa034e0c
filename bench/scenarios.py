"""The bench's scenarios: `SxR` runs S streams at R tokens per second; `idleN` holds N sockets."""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT = ("ttft200", "100x20", "100x100", "300x20", "500x20", "idle2000")
QUICK = ("10x20", "idle20")
DURATION_S = 12.0
QUICK_DURATION_S = 1.0
RAMP_S = 2.0

_LOAD = re.compile(r"^(\d+)x(\d+(?:\.\d+)?)$")
_IDLE = re.compile(r"^idle(\d+)$")
_TTFT = re.compile(r"^ttft(\d+)$")


@dataclass(frozen=True)
class Scenario:
    """One load: `streams` at `rate` tokens/s of `tokens` each, or `connections` idle sockets."""

    name: str
    streams: int = 0
    rate: float = 0.0
    tokens: int = 0
    connections: int = 0
    ramp_s: float = 0.0
    serial: bool = False  # one stream at a time (time to first token on an idle worker)

    @property
    def idle(self) -> bool:
        return self.streams == 0

    @property
    def offered(self) -> float:
        """Offered load in tokens per second, all streams together."""
        return self.rate if self.serial else self.streams * self.rate


def parse(name: str, duration_s: float = DURATION_S, ramp_s: float = RAMP_S) -> Scenario:
    """`100x20` (lasting about `duration_s` per stream) or `idle2000`; ValueError otherwise."""
    if load := _LOAD.match(name):
        streams, rate = int(load[1]), float(load[2])
        if streams < 1 or rate <= 0:
            raise ValueError(f"scenario {name!r}: streams and rate must be positive")
        tokens = max(2, round(rate * duration_s))
        return Scenario(name, streams, rate, tokens, connections=streams, ramp_s=ramp_s)
    if ttft := _TTFT.match(name):
        # Short streams, one after another: what chatsock adds to the time to
        # the first token when nothing else is running.
        return Scenario(name, max(1, int(ttft[1])), 1000.0, 2, connections=2, serial=True)
    if idle := _IDLE.match(name):
        return Scenario(name, connections=max(1, int(idle[1])))
    raise ValueError(
        f"scenario {name!r}: expected SxR (e.g. 100x20), ttftN (e.g. ttft200) "
        "or idleN (e.g. idle2000)"
    )
