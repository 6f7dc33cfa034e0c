"""The demo page in a real headless Chromium: streams a reply as text, and stops one."""

from __future__ import annotations

import pytest

from chatsock.app import STORE
from chatsock.providers.demo import demo_reply
from tests.support.browser import run_browser_script

pytestmark = pytest.mark.node


async def test_page_streams_a_reply_as_text_and_stops_the_next(start_server):
    server = await start_server(demo={"tokens_per_second": 40})
    result = await run_browser_script("page.mjs", f"http://127.0.0.1:{server.port}/")
    assert "failure" not in result, result
    hostile = "<img src=x onerror=window.pwned=1> rivers"
    assert result["userText"] == hostile  # shown as text, never parsed as HTML
    assert result["injected"] == {"imgs": 0, "pwned": False}
    assert result["firstReply"] == demo_reply(hostile)
    stopped = result["stoppedReply"]
    assert stopped
    assert len(stopped) < len(demo_reply("stop this one"))
    assert result["stopDisabledAfter"] is True
    assert result["errors"] == []
    messages = await server.app[STORE].get_messages(result["sessionId"])
    assert [(m.role, m.status) for m in messages] == [
        ("user", "complete"),
        ("assistant", "complete"),
        ("user", "complete"),
        ("assistant", "stopped"),
    ]
    assert messages[-1].content == stopped
