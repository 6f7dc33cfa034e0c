"""How a Redis command is retried: the first retry at once, later ones backing off."""

from __future__ import annotations

from redis.backoff import ExponentialWithJitterBackoff


class RetryAtOnce(ExponentialWithJitterBackoff):
    """The first retry goes at once, later ones back off with jitter.

    After a Redis restart every pooled connection is dead. redis-py 8 no longer
    checks a pooled connection before use while maintenance notifications are on
    ("auto", its default), so the first command on each fails and is retried:
    with a plain backoff that costs up to 100 ms per connection, which is what
    made a cross-worker stop right after a restart miss its 100 ms promise. A
    failure on a fresh connection is a real outage, and backs off as before.
    """

    def __init__(self, cap: float = 0.5, base: float = 0.05) -> None:
        super().__init__(cap=cap, base=base)

    def compute(self, failures: int) -> float:
        return 0.0 if failures <= 1 else super().compute(failures - 1)
