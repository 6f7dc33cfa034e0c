"""The soak's stream verdict: every record the clients wrote, checked against the promises.

For each stream (docs/protocol.md): every follower (the client that started it,
across its resumes on the other worker; a second tab) got seqs 1..n once each,
exactly one terminal event and nothing after it, and its tokens in seq order
spell the terminal's text; all followers' terminals agree; the stream ended
with `chat_complete`; the reply read back through `GET /api/chat/sessions/{id}`
has that text and the status the terminal says (`complete` or `stopped`); a
stop acked `stopped: true` ended the stream as stopped (and `false` did not);
every resume, join and delete was accepted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Verdict:
    """What the records add up to."""

    streams: int = 0
    verified: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    load_errors: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def _follower(where: str, f: dict[str, Any]) -> tuple[list[str], str | None]:
    """A follower's problems, and the text its tokens spell in seq order."""
    problems = []
    seqs: list[int] = f["seqs"]
    dupes = sorted(s for s, n in Counter(seqs).items() if n > 1)
    if dupes:
        problems.append(f"{where}: duplicate seqs {dupes[:10]}")
    if sorted(set(seqs)) != list(range(1, len(set(seqs)) + 1)):
        missing = sorted(set(range(1, max(seqs, default=0) + 1)) - set(seqs))
        problems.append(f"{where}: seqs not contiguous from 1, missing {missing[:10]}")
    terminals = f["terminals"]
    if len(terminals) != 1:
        problems.append(f"{where}: {len(terminals)} terminal events")
    if f["afterTerminal"]:
        problems.append(f"{where}: {f['afterTerminal']} events after the terminal")
    by_seq = dict(zip(seqs, f["tokens"], strict=True))
    text = "".join(by_seq[s] for s in sorted(by_seq))
    if terminals and terminals[0]["text"] != text:
        problems.append(f"{where}: tokens spell {len(text)} chars, the terminal says another text")
    return problems, text


def check_stream(rec: dict[str, Any]) -> list[str]:
    """Every broken promise of one stream's record."""
    where = f"lane {rec['lane']} stream {rec['k']} ({rec.get('streamId', 'no id')})"
    if "ackError" in rec:
        return [f"{where}: chat_stream refused with {rec['ackError']}"]
    problems = []
    if rec.get("timedOut"):
        problems.append(f"{where}: no terminal event within its deadline")
    texts = []
    for f in rec["followers"]:
        found, text = _follower(f"{where} follower {f['name']}", f)
        problems += found
        texts.append(text)
    ends = [f["terminals"][0] for f in rec["followers"] if f["terminals"]]
    if not ends:
        return [*problems, f"{where}: no follower saw an end"]
    end = ends[0]

    def outcome(e: dict[str, Any]) -> tuple[Any, ...]:
        return e["name"], e["text"], bool(e.get("stopped"))

    if any(outcome(e) != outcome(end) for e in ends):
        problems.append(f"{where}: the followers' terminals disagree")
    if end["name"] != "chat_complete":
        problems.append(f"{where}: ended with {end['name']} {end.get('code')}")
    stored = rec.get("persisted") or {}
    want = "stopped" if end.get("stopped") else "complete"
    if end["name"] != "chat_complete":
        want = "error"
    if stored.get("status") != want:
        problems.append(f"{where}: stored with status {stored.get('status')!r}, ended {want}")
    elif stored.get("content") != end["text"]:
        problems.append(f"{where}: the stored reply differs from the text streamed")
    stop = rec.get("stopAck")
    if stop is not None:
        if not stop["ok"]:
            problems.append(f"{where}: chat_stop failed with {stop['code']}")
        elif bool(stop["stopped"]) != bool(end.get("stopped")):
            problems.append(f"{where}: chat_stop acked stopped={stop['stopped']}, end disagrees")
    for resume in rec.get("resumes", []):
        if not resume["ok"]:
            problems.append(
                f"{where}: chat_resume after {resume['after']} failed: {resume['code']}"
            )
    join = rec.get("join")
    if join is not None:
        problems += _check_join(where, join, end)
    if rec.get("deleted") not in (None, 200):
        problems.append(f"{where}: DELETE session answered {rec['deleted']}")
    return problems


def _check_join(where: str, join: dict[str, Any], end: dict[str, Any]) -> list[str]:
    if "clientError" in join:
        return []  # the tab never connected: a load error, counted by the clients
    if not join["ok"]:
        return [f"{where}: second tab's session_join failed: {join['code']}"]
    if join["live"]:
        for drop in join.get("drops", []):
            if not drop["ok"]:
                return [f"{where}: second tab's chat_resume after a drop failed: {drop['code']}"]
        resume = join.get("resume") or {}
        if not resume.get("ok"):
            return [f"{where}: second tab's chat_resume failed: {resume.get('code')}"]
        if join.get("timedOut"):
            return [f"{where}: second tab saw no end"]
        return []
    # Joined after the end: the reply is in the join's messages, and no event came.
    problems = []
    reply = join.get("reply")
    if reply is None or reply["content"] != end["text"]:
        problems.append(f"{where}: second tab joined after the end, reply missing or differs")
    if join.get("events"):
        problems.append(
            f"{where}: second tab joined after the end, yet got {join['events']} events"
        )
    return problems


def verify(lines: Iterable[dict[str, Any]]) -> Verdict:
    """Check every stream record, and the clients' summary (the last line)."""
    verdict = Verdict()
    c = verdict.counts
    for rec in lines:
        if "summary" in rec:
            verdict.summary = rec["summary"]
            continue
        verdict.streams += 1
        problems = check_stream(rec)
        verdict.violations += problems
        verdict.verified += not problems
        resumed = [r for r in rec.get("resumes", [])]
        c["resumes"] += len(resumed)
        c["resumes_after_drop"] += sum(r.get("why", "").startswith("dropped") for r in resumed)
        c["streams_resumed"] += bool(resumed)
        stop = rec.get("stopAck")
        if stop:
            c["stops"] += 1
            c["stops_elsewhere"] += stop["from"] == "elsewhere"
            c["stops_that_stopped"] += bool(stop.get("stopped"))
        join = rec.get("join")
        if join:
            c["second_tabs"] += 1
            c["second_tabs_live"] += bool(join.get("live"))
            c["second_tabs_not_connected"] += "clientError" in join
        c["deletes"] += "deleted" in rec
        ends = [f["terminals"][0] for f in rec.get("followers", []) if f["terminals"]]
        if ends:
            c["stopped" if ends[0].get("stopped") else ends[0]["name"]] += 1
            c["tokens_delivered"] += sum(len(f["seqs"]) for f in rec["followers"])
            c["tabs_ended_before_catch_up"] += any(
                f.get("catchUpAfterEnd") for f in rec["followers"]
            )
    violations, verdict.load_errors = _client_problems(verdict.summary)
    verdict.violations += violations
    return verdict


LOAD_ERRORS = ("connect to worker", "churn connect", "lane ")


def _client_problems(summary: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Trouble the clients saw outside any one stream: (violations, load errors).

    A connect that fails (the box is saturated, the listen backlog full) breaks
    no promise, so it is a load error, counted and shown; so is a stream its
    client gave up on because it could not reconnect (it is left unverified).
    """
    if not summary:
        return ["the clients wrote no summary (did they crash?)"], []
    violations, load = [], []
    for key, what in (
        ("foreignEvents", "events of a stream a socket never followed"),
        ("lateEvents", "events after a stream's record was written (late duplicates)"),
        ("churnFailed", "churn sockets let in without a valid token, or answered wrongly"),
    ):
        if summary.get(key):
            violations.append(f"clients: {summary[key]} {what}")
    for key, what in (
        ("connectFailures", "connects that failed (retried up to 3 times)"),
        ("churnConnectFailed", "churn connects with a valid token that failed"),
        ("clientErrors", "streams left unverified: their client could not reconnect"),
    ):
        if summary.get(key):
            load.append(f"clients: {summary[key]} {what}")
    for problem in summary.get("problems", [])[:20]:
        (load if problem.startswith(LOAD_ERRORS) else violations).append(f"clients: {problem}")
    unended = (summary.get("started") or 0) - (summary.get("ended") or 0)
    if unended != (summary.get("clientErrors") or 0):
        violations.append(f"clients: {unended} streams started but never ended")
    return violations, load
