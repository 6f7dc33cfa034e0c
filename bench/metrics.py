"""From what the load generator saw and what the upstream stamped to the scenario's figures."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def added_latencies(
    deltas: Sequence[Sequence[float]], chunks: Sequence[Sequence[float]]
) -> list[float]:
    """Per upstream delta: when the client had its last character, minus when it was written.

    `deltas` are the upstream's (end offset, send ms), `chunks` the client's
    (end offset, receive ms), both in order. A delta counts as delivered by
    the first chunk reaching its end offset (chatsock coalesces deltas, so a
    chunk may carry several, or end mid-delta). Undelivered deltas are left out.
    """
    out: list[float] = []
    k = 0
    for end, sent in deltas:
        while k < len(chunks) and chunks[k][0] < end:
            k += 1
        if k == len(chunks):
            break
        out.append(chunks[k][1] - sent)
    return out


@dataclass
class StreamFigures:
    """What every stream of one scenario run adds up to."""

    verified: int = 0
    failed: int = 0
    delivered_tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    ttft_overheads: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)


def stream_figures(result: dict[str, Any], stamps: dict[str, Any]) -> StreamFigures:
    """Check each stream against the upstream's stamps and collect its timings.

    A stream is verified when the load generator found it whole (seq
    contiguous, text equal to `full_response`) and its text is as long as
    what the upstream sent. Deltas that reached the client count as delivered
    (and have a latency) even in a stream that did not end in time, unless
    its text was wrong.
    """
    figures = StreamFigures()
    for stream in result.get("streams", []):
        sent: dict[str, Any] = stamps.get(stream["message"]) or {}
        deltas = sent.get("deltas", [])
        chunks = stream.get("chunks", [])
        why = stream["why"]
        if not why and not sent:
            why = "the upstream never saw this request"
        elif not why and (chunks[-1][0] if chunks else 0) != (deltas[-1][0] if deltas else 0):
            why = "the text is shorter or longer than the upstream sent"
        if why:
            figures.failed += 1
            figures.failures[why] += 1
        else:
            figures.verified += 1
        if not stream["textOk"]:
            continue
        latencies = added_latencies(deltas, chunks)
        figures.delivered_tokens += len(latencies)
        figures.latencies += latencies
        if stream.get("firstTokenAt") is not None and deltas:
            # What the upstream took to answer is not the server's.
            upstream_wait = deltas[0][1] - sent["received_ms"]
            ttft = stream["firstTokenAt"] - stream["emitAt"]
            figures.ttft_overheads.append(ttft - upstream_wait)
    return figures


def commands_total(commandstats: dict[str, Any]) -> int:
    """Redis commands counted by `INFO commandstats`, leaving out the bench's own."""
    ours = {"cmdstat_info", "cmdstat_config|resetstat", "cmdstat_config"}
    return sum(int(v["calls"]) for k, v in commandstats.items() if k not in ours)
