"""The bench's scenarios: `SxR` runs S streams at R tokens per second; `idleN` holds N sockets."""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT = ("100x20", "100x100", "300x20", "500x20", "idle2000")
QUICK = ("10x20", "idle20")
DURATION_S = 12.0
QUICK_DURATION_S = 1.0
RAMP_S = 2.0

_LOAD = re.compile(r"^(\d+)x(\d+(?:\.\d+)?)$")
_IDLE = re.compile(r"^idle(\d+)$")


@dataclass(frozen=True)
class Scenario:
    """One load: `streams` at `rate` tokens/s of `tokens` each, or `connections` idle sockets."""

    name: str
    streams: int = 0
    rate: float = 0.0
    tokens: int = 0
    connections: int = 0
    ramp_s: float = 0.0

    @property
    def idle(self) -> bool:
        return self.streams == 0

    @property
    def offered(self) -> float:
        """Offered load in tokens per second, all streams together."""
        return self.streams * self.rate


def parse(name: str, duration_s: float = DURATION_S, ramp_s: float = RAMP_S) -> Scenario:
    """`100x20` (lasting about `duration_s` per stream) or `idle2000`; ValueError otherwise."""
    if load := _LOAD.match(name):
        streams, rate = int(load[1]), float(load[2])
        if streams < 1 or rate <= 0:
            raise ValueError(f"scenario {name!r}: streams and rate must be positive")
        tokens = max(2, round(rate * duration_s))
        return Scenario(name, streams, rate, tokens, connections=streams, ramp_s=ramp_s)
    if idle := _IDLE.match(name):
        return Scenario(name, connections=max(1, int(idle[1])))
    raise ValueError(f"scenario {name!r}: expected SxR (e.g. 100x20) or idleN (e.g. idle2000)")
