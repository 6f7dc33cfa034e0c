"""The page's reasoning and regenerate, in headless Chromium: the Thinking section
open while the model reasons and collapsed once text comes, a reload mid-reasoning
with nothing twice, the Think toggle's `thinking_budget`, Regenerate replacing the
reply with its first version browsable, and hostile reasoning kept inert."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from chatsock.app import STORE
from chatsock.providers.demo import demo_reasoning, demo_reply
from tests.conftest import url_of
from tests.fakes.upstream import FakeOpenAI, Reply, reasoning
from tests.support.browser import run_browser_script
from tests.support.invariants import assert_none, worker_problems

pytestmark = pytest.mark.node

MESSAGE = "think about rivers"


def _plain(text: str) -> str:
    """Rendered markdown's text, its whitespace as one space."""
    return " ".join(text.split())


def _turns(messages: list[dict[str, Any]]) -> list[tuple[str, str, str, str | None]]:
    return [(m["role"], m["content"], m["status"], m["reasoning"]) for m in messages]


async def test_thinking_shows_survives_a_reload_and_regenerate_keeps_versions(start_server):
    # The demo provider reasons only when asked: here by the page's Think toggle.
    server = await start_server(demo={"tokens_per_second": 30})
    options = {"message": MESSAGE, "think": True, "reload": True, "regenerate": True}
    result = await run_browser_script(
        "page.mjs", "reasoning", f"{url_of(server)}/", json.dumps(options)
    )
    assert "failure" not in result, result.get("failure")
    assert result["errors"] == []
    assert result["violations"] == []
    thought, reply = demo_reasoning(MESSAGE), demo_reply(MESSAGE)

    # Think is off until pressed, and kept across the reload.
    assert (result["thinkOff"], result["thinkOn"], result["thinkAfterReload"]) == (
        "false",
        "true",
        "true",
    )
    # While the model reasons and no text has come: open, "Thinking…", a prefix.
    during = result["during"]
    assert (during["hidden"], during["open"], during["summary"], during["text"]) == (
        False,
        True,
        "Thinking…",
        "",
    )
    assert thought.startswith(_plain(during["reasoning"]))
    # A reload mid-reply shows the same reasoning (a prefix of it, no duplicate).
    reloaded = result["afterReload"]
    assert reloaded["status"] in ("pending", "streaming")
    if reloaded["text"] == "":  # still reasoning (the usual case): open, as before the reload
        assert (reloaded["open"], reloaded["summary"]) == (True, "Thinking…")
    assert thought.startswith(_plain(reloaded["reasoning"])), reloaded["reasoning"]
    # Text arrives: the section collapses, and stays shown with the whole reasoning.
    answering = result["answering"]
    assert (answering["hidden"], answering["open"]) == (False, False)
    assert _plain(answering["reasoning"]) == thought
    ended = result["ended"]
    assert (ended["hidden"], ended["open"], _plain(ended["reasoning"])) == (False, False, thought)
    assert ended["text"].startswith("You said:")
    assert ended["summary"].startswith("Thought for "), ended["summary"]
    assert ended["summary"].endswith(f" s · {len(thought)} characters"), ended["summary"]
    assert (ended["regenerate"], ended["version"]) == (True, None)
    assert _turns(result["first"]) == [
        ("user", MESSAGE, "complete", None),
        ("assistant", reply, "complete", thought),
    ]
    assert result["first"][1]["result"]["reasoning_chars"] == len(thought)

    # Regenerate (Think now off): the reply is replaced in place, the first kept.
    assert result["replies"] == 1
    regenerated = result["regenerated"]
    assert (regenerated["version"], regenerated["hidden"], regenerated["regenerate"]) == (
        "version 2 of 2",
        True,  # this one did not reason
        True,
    )
    first_version = {"content": reply, "status": "complete", "reasoning": thought}
    assert _turns(result["second"]) == [
        ("user", MESSAGE, "complete", None),
        ("assistant", reply, "complete", None),
    ]
    assert result["second"][1]["versions"] == [first_version]
    # "<" shows the first version (read-only: no Regenerate), ">" comes back.
    older = result["olderVersion"]
    assert (older["version"], older["hidden"], _plain(older["reasoning"]), older["regenerate"]) == (
        "version 1 of 2",
        False,
        thought,
        False,
    )
    assert result["olderDisabled"] is True
    assert result["newerVersion"]["version"] == "version 2 of 2"
    # After a reload the versions come from the server.
    assert result["reloaded"][1]["versions"] == [first_version]
    assert _plain(result["reloadedOlder"]["reasoning"]) == thought

    # What the page sent: reasoning asked for, a budget only with Think on, never an effort.
    sent = result["emitted"]
    assert [name for name, _ in sent] == ["chat_stream", "chat_regenerate"]
    stream, regenerate = (payload for _, payload in sent)
    assert (stream["reasoning"], stream["thinking_budget"]) == (True, 2048)
    assert regenerate["reasoning"] is True
    assert "thinking_budget" not in regenerate
    assert all("reasoning_effort" not in payload for _, payload in sent)

    store = server.app[STORE]
    stored = await store.get_messages(result["session"])
    assert [(m.role, m.content, m.reasoning) for m in stored] == [
        ("user", MESSAGE, None),
        ("assistant", reply, None),
    ]
    assert stored[1].versions is not None
    assert [(v["content"], v["reasoning"]) for v in stored[1].versions] == [(reply, thought)]
    async with aiohttp.ClientSession() as http:
        assert_none(await worker_problems(http, url_of(server)))


HOSTILE_THOUGHTS = [
    "Let me think. ",
    '<img src=x onerror="window.pwned=11"> ',
    "<script>window.pwned=12</script>\n\n",
    "[link](javascript:window.pwned=13) ",
    '<div style="color:red" onclick="window.pwned=14">styled</div>\n\n',
    "**Done** thinking.",
]


async def test_hostile_reasoning_is_inert(start_server, make_settings):
    # An OpenAI-compatible model streams its reasoning whatever the page asks.
    async with FakeOpenAI() as upstream:
        upstream.enqueue(
            Reply(prelude=reasoning(*HOSTILE_THOUGHTS), pieces=["The **answer**."], gap=0.1)
        )
        settings = make_settings(
            providers={
                "openai": {
                    "kind": "openai",
                    "base_url": upstream.base_url,
                    "api_key": "sk-test-0123456789",
                    "max_retries": 0,
                    "model": "gpt-page",
                },
            },
            chain=["openai"],
        )
        server = await start_server(settings)
        options = {"message": "hostile thoughts"}
        result = await run_browser_script(
            "page.mjs", "reasoning", f"{url_of(server)}/", json.dumps(options)
        )
        assert "failure" not in result, result.get("failure")
        assert result["errors"] == []
        assert result["violations"] == []
        assert result["during"]["open"] is True
        ended = result["ended"]
        assert (ended["hidden"], ended["open"], _plain(ended["text"])) == (
            False,
            False,
            "The answer.",
        )
        assert "Done thinking." in ended["reasoning"]  # markdown, rendered
        assert "window.pwned=13" not in json.dumps(result["injected"]["links"])
        injected = result["injected"]
        assert injected["pwned"] is None
        assert (injected["scripts"], injected["handlers"], injected["jsLinks"]) == (0, [], 0)
        assert (injected["frames"], injected["styles"]) == (0, 0)
        # Think off: no budget, and never an effort a non-reasoning model would refuse.
        body = upstream.requests[0].body
        assert "reasoning_effort" not in body
        assert "thinking_budget" not in json.dumps(result["emitted"])
