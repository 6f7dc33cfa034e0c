"""The page in the `jwt` auth mode, in headless Chromium: it asks for a token,
says when one is refused, and chats as that token's user once one is pasted."""

from __future__ import annotations

import json
import time

import jwt
import pytest

from chatsock.app import STORE
from chatsock.providers.demo import demo_reply
from tests.conftest import url_of
from tests.support.browser import run_browser_script

pytestmark = pytest.mark.node

SECRET = "k" * 64


async def test_a_pasted_token_is_kept_and_used(start_server):
    server = await start_server(
        auth={"mode": "jwt", "jwt_secret": SECRET}, demo={"tokens_per_second": 200}
    )
    now = int(time.time())
    token = jwt.encode({"sub": "alice", "iat": now, "exp": now + 600}, SECRET)
    result = await run_browser_script(
        "page.mjs", "jwt", f"{url_of(server)}/", json.dumps({"token": token})
    )
    assert "failure" not in result, result.get("failure")
    assert result["errors"] == []
    assert "needs a token" in result["asked"]
    assert "refused the token" in result["refused"]
    assert result["panelHidden"] is True
    assert result["stored"] is True
    assert [(m["role"], m["content"], m["status"]) for m in result["messages"]] == [
        ("user", "with a token", "complete"),
        ("assistant", demo_reply("with a token"), "complete"),
    ]
    session = await server.app[STORE].get_session(result["session"])
    assert session is not None
    assert session.owner == "alice"
