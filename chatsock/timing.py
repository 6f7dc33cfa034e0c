"""Every timing constant of a worker, in one place, and the rules that relate them.

The constants depend on each other (a worker waiting for another's end must
wait longer than that worker retries its store writes; a lease must outlive
several refresh ticks). `check_timing` states those relationships as code and
runs at start-up, so a change that breaks one fails loudly instead of
producing a rare race in production.
"""

from __future__ import annotations

from typing import Final

# -- store writes -----------------------------------------------------------
STORE_RETRY_S: Final = 3.0  # how long stream writes ride out a store outage

# -- stream upkeep (owner side) ----------------------------------------------
UPKEEP_S: Final = 0.5  # leases, TTLs and the stop-flag backup check, per tick
LEASE_REFRESHES: Final = 3  # a lease is refreshed this many times per lease_s
READER_CLOSE_S: Final = 5.0  # a stopped provider read gets this long to close upstream

# -- ends --------------------------------------------------------------------
# After claiming a stream's end, its winner makes at most this many retried
# writes (final flush, persist, record the end), each bounded by STORE_RETRY_S.
WRITES_AFTER_CLAIM: Final = 3
# How long a worker that lost the claim on a stream's end waits for the
# winner to record it: longer than all the winner's writes can take.
END_WAIT_S: Final = 10.0
END_POLL_S: Final = 0.02
DELETE_WAIT_S: Final = 10.0
# A local chat_stop waits this long for its stream's end (milliseconds unless the
# store fails), and a stop sent to another worker repeats its signal this long;
# a DELETE waits this long for a stopped stream's end. (A stop on another worker
# waits up to END_WAIT_S for the recorded end its ack reports.)
STOP_ACK_WAIT_S: Final = 2.0
# Meanwhile the stop signal is sent again this often, so an owner whose listener
# was resubscribing (Redis just restarted) hears it within the 100 ms promise.
STOP_SIGNAL_REPEAT_S: Final = 0.025

# -- following a stream generated elsewhere ------------------------------------
TAIL_POLL_MS: Final = 250
TAIL_IDLE_FOLLOWERLESS_S: Final = 5.0
TAIL_MAX_FAILURES: Final = 5  # consecutive unexpected failures before a tail gives up

# -- presence (stop_on_disconnect across workers) ------------------------------
PRESENCE_REFRESH_S: Final = 0.5
PRESENCE_TTL_S: Final = 3

# -- pub/sub listeners -------------------------------------------------------
SIGNAL_HEARTBEAT_S: Final = 2.0
MANAGER_HEARTBEAT_S: Final = 1.0
MANAGER_DEAF_AFTER_S: Final = 4.0
LISTENER_DEAF_S: Final = 6.0  # /readyz: a listener silent this long is not ready

# -- background loops --------------------------------------------------------
LOOP_FIRST_RESTART_S: Final = 0.1  # a failed background loop restarts after this, doubling
LOOP_RESTART_MAX_S: Final = 5.0  # backoff cap when a background loop keeps failing
LOOP_FAILING_AFTER: Final = 3  # failures within LOOP_FAILING_WINDOW_S make a loop "failing"
LOOP_FAILING_WINDOW_S: Final = 60.0


class TimingError(ValueError):
    """Configured timings contradict each other; the message says which and how."""


def check_timing(*, lease_s: float, log_ttl: int) -> None:
    """Raise TimingError when the configured and fixed timings cannot work together."""
    rules = [
        (
            END_WAIT_S > WRITES_AFTER_CLAIM * STORE_RETRY_S,
            "END_WAIT_S must exceed the winner's writes after its claim",
        ),
        (
            DELETE_WAIT_S > WRITES_AFTER_CLAIM * STORE_RETRY_S,
            "DELETE_WAIT_S must exceed a stopped stream's writes",
        ),
        (PRESENCE_TTL_S >= 2 * PRESENCE_REFRESH_S, "PRESENCE_TTL_S must cover two refreshes"),
        (
            LISTENER_DEAF_S > max(SIGNAL_HEARTBEAT_S, MANAGER_DEAF_AFTER_S),
            "LISTENER_DEAF_S must exceed the listeners' heartbeat and restart periods",
        ),
        (MANAGER_DEAF_AFTER_S > 2 * MANAGER_HEARTBEAT_S, "a deaf manager must miss 2 heartbeats"),
    ]
    for ok, why in rules:
        if not ok:
            raise TimingError(why)
    if lease_s < LEASE_REFRESHES * UPKEEP_S:
        raise TimingError(
            f"stream.lease_s: {lease_s:g}s is too short; the lease is refreshed every "
            f"{UPKEEP_S:g}s at best, so use at least {LEASE_REFRESHES * UPKEEP_S:g}s"
        )
    if log_ttl <= lease_s:
        raise TimingError(f"stream.log_ttl: {log_ttl}s must exceed stream.lease_s ({lease_s:g}s)")
