"""The page at `/` in a real headless Chromium: markdown while streaming, code
blocks, Enter / Shift+Enter, Stop and Esc, the session sidebar, XSS from the user,
and the screenshots in docs/ (CHATSOCK_SCREENSHOTS=1 writes them there)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chatsock.app import STORE
from chatsock.providers.demo import demo_reply
from tests.conftest import url_of
from tests.support.browser import run_browser_script
from tests.support.invariants import assert_none, worker_problems
from tests.support.node import ROOT

pytestmark = pytest.mark.node

HOSTILE = "<img src=x onerror=window.pwned=1> **rivers** [x](javascript:window.pwned=2)"


# Read at import: the autouse fixture that isolates tests removes CHATSOCK_* variables.
TO_DOCS = os.environ.get("CHATSOCK_SCREENSHOTS") == "1"


def _screenshots(tmp_path: Path) -> Path:
    """docs/ with CHATSOCK_SCREENSHOTS=1 (to refresh them), else a temporary folder."""
    return ROOT / "docs" if TO_DOCS else tmp_path


def _stored(messages: list[Any]) -> list[tuple[str, str, str]]:
    return [(m.role, m.content, m.status) for m in messages]


def _shown(messages: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(m["role"], m["content"], m["status"]) for m in messages]


async def test_the_page_renders_streams_stops_and_keeps_its_sessions(start_server):
    server = await start_server(demo={"tokens_per_second": 40})
    options = {"hostile": HOSTILE}
    result = await run_browser_script(
        "page.mjs", "basics", f"{url_of(server)}/", json.dumps(options)
    )
    assert "failure" not in result, result.get("failure")
    assert result["errors"] == []
    assert result["violations"] == []  # the page runs under its CSP untouched

    # Shift+Enter is a new line; Enter sends and clears the box.
    assert result["shiftEnter"] == {"value": "line one\nline two", "replies": 0}
    assert result["inputAfterSend"] == ""
    # Markdown is rendered while the reply streams (no raw `**`), and after it.
    during = result["duringStream"]
    assert during["strong"] == "rivers"  # the demo echoes the message: **rivers** is bold
    assert during["stopVisible"] is True
    assert during["raw"] is False
    assert result["dotsSeen"] is True  # typing dots before the first token
    after = result["afterStream"]
    reply = demo_reply(HOSTILE)
    code = reply.split("```python\n", 1)[1].split("```", 1)[0]
    assert after["code"] == code
    assert after["highlighted"] > 0  # highlight.js spans
    assert after["rawFence"] is False
    assert after["inlineCode"] == ["CHATSOCK_PROVIDERS", "openai", "anthropic"]
    assert after["sendVisible"] is True
    for part in ("tok/s", "first token", "in / ", "out tokens", "demo/demo-1"):
        assert part in after["meta"], after["meta"]
    # The copy button copies the block's source.
    assert result["copyLabel"] == "Copied"
    assert result["clipboard"] == code
    # The user's HTML is shown as text; nothing ran, no handler or javascript: link exists.
    assert after["userText"] == HOSTILE
    injected = result["injected"]
    assert injected["pwned"] is None
    assert (injected["scripts"], injected["handlers"], injected["jsLinks"]) == (0, [], 0)

    # Stop, then Esc, each stop a reply part-way; what the page shows is what was stored.
    assert result["stopStatuses"] == ["complete", "stopped", "stopped"]
    first = result["first"]
    assert result["hash"] == f"#/s/{first['session']}"
    store = server.app[STORE]
    shown = _shown(first["messages"])
    assert shown == _stored(await store.get_messages(first["session"]))
    assert shown[1][1] == reply
    for _, text, status in shown[3::2]:
        assert status == "stopped"
        assert 0 < len(text) < len(demo_reply("stop this one"))

    # The sidebar: a new chat gets its own URL and entry; switching back shows the
    # first chat rendered; deleting the second removes it from the list and the store.
    assert result["newChatHash"] == "#/"
    second = result["second"]
    assert second["session"] != first["session"]
    assert _shown(second["messages"]) == [
        ("user", "a second chat", "complete"),
        ("assistant", demo_reply("a second chat"), "complete"),
    ]
    assert [(s["id"], s["current"]) for s in result["listed"]] == [
        (second["session"], True),
        (first["session"], False),
    ]
    assert result["listed"][1]["title"] == HOSTILE  # a title is text too
    switched = result["switched"]
    assert switched["hash"] == f"#/s/{first['session']}"
    assert _shown(switched["messages"]) == shown
    assert switched["rendered"] is True
    assert result["afterDelete"] == {
        "listed": [first["session"]],
        "hash": f"#/s/{first['session']}",
    }
    assert await store.get_session(second["session"]) is None
    assert "could not be opened (not_found" in result["deletedNotice"]

    async with aiohttp.ClientSession() as http:
        assert_none(await worker_problems(http, url_of(server)))


async def test_light_dark_and_phone_screenshots(start_server, tmp_path):
    server = await start_server(demo={"tokens_per_second": 200})
    shots = _screenshots(tmp_path)
    options = {"screenshots": str(shots)}
    result = await run_browser_script(
        "page.mjs", "screens", f"{url_of(server)}/", json.dumps(options)
    )
    assert "failure" not in result, result.get("failure")
    assert result["errors"] == []
    assert result["darkBackground"] == "rgb(13, 17, 23)"
    assert result["thinking"]["hidden"] is False  # the screenshots show a Thinking section
    assert result["thinking"]["summary"].startswith("Thought for ")
    # On a phone the chat list hides behind the menu button, opens, and closes.
    assert result["phone"] == {
        "sidebarShown": False,
        "menuShown": True,
        "sidebarOpened": True,
        "sidebarClosed": True,
    }
    for name in ("page-light.png", "page-dark.png", "page-phone.png"):
        assert (shots / name).stat().st_size > 10_000, name


async def test_an_unbuilt_page_says_what_to_run(start_server, tmp_path, http):
    # A checkout without `make deps` has the page's HTML but not its bundle.
    (tmp_path / "index.html").write_text("<!doctype html><title>x</title>")
    server = await start_server(static_dir=str(tmp_path))
    async with http.get(f"{url_of(server)}/") as reply:
        assert reply.status == 503
        assert "make deps" in await reply.text()
