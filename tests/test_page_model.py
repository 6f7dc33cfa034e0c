"""The page with model output we script (a fake OpenAI upstream): hostile markdown
stays inert, a reply that fails mid-stream keeps its partial with a caveat and a
Retry, a refused request says why, and the picker sends the chosen provider and model."""

from __future__ import annotations

import json

import pytest

from chatsock.app import STORE
from tests.conftest import url_of
from tests.fakes.upstream import FakeOpenAI, Reply
from tests.support.browser import run_browser_script

pytestmark = pytest.mark.node

HOSTILE_REPLY = [
    "Hello **bold**\n\n",
    '<img src=x onerror="window.pwned=3"> ',
    "<script>window.pwned=4</script>\n\n",
    "[click](javascript:window.pwned=5) ",
    '<a href="javascript:window.pwned=6">raw link</a> ',
    '<a href="JaVaScRiPt:window.pwned=7">mixed case</a> ',
    '<iframe srcdoc="<script>parent.pwned=8</script>"></iframe>',
    "<svg onload=window.pwned=9></svg>",
    '<div style="color:red" onclick="window.pwned=10">styled</div>\n\n',
    "[fine](https://example.com/)",
]
PARTIAL = ["Partial **answer** ", "that breaks"]
USER_HTML = "<b onmouseover=window.pwned=1>user html</b> [me](javascript:window.pwned=2)"


async def test_model_output_is_inert_and_a_failed_reply_keeps_its_partial(
    start_server, make_settings
):
    async with FakeOpenAI() as upstream:
        upstream.enqueue(
            Reply(pieces=HOSTILE_REPLY, usage=(12, 34)),
            Reply(pieces=[*PARTIAL, "never sent"], ending="reset", cut_after=2),
            Reply(pieces=["Recovered."]),
        )
        settings = make_settings(
            providers={
                "openai": {
                    "kind": "openai",
                    "base_url": upstream.base_url,
                    "api_key": "sk-test-0123456789",
                    "max_retries": 0,
                    "model": "gpt-page",
                    "models": ["gpt-other"],
                },
            },
            chain=["demo"],
        )
        server = await start_server(settings)
        options = {"provider": "openai", "model": "gpt-other", "refuse": True, "user": USER_HTML}
        result = await run_browser_script(
            "page.mjs", "model", f"{url_of(server)}/", json.dumps(options)
        )
        bodies = [request.body for request in upstream.requests]
    assert "failure" not in result, result.get("failure")
    assert result["errors"] == []
    assert result["violations"] == []

    # The picker lists /api/providers; the choice reaches the upstream.
    assert result["picker"]["providers"] == [
        ["", "Default (demo)"],
        ["demo", "demo"],
        ["openai", "openai"],
    ]
    assert result["models"] == ["gpt-page", "gpt-other"]
    assert {body["model"] for body in bodies} == {"gpt-other"}

    # Hostile HTML from the user and from the model: nothing runs or remains active.
    assert result["userText"] == USER_HTML
    injected = result["injected"]
    assert injected["pwned"] is None
    assert injected["scripts"] == 0
    assert injected["handlers"] == []
    assert injected["jsLinks"] == 0
    assert injected["frames"] == 0
    assert injected["styles"] == 0
    assert "https://example.com/" in injected["links"]
    # The model's HTML is shown as the text it is; its markdown is rendered.
    assert '<img src=x onerror="window.pwned=3">' in result["firstText"]
    assert "<script>window.pwned=4</script>" in result["firstText"]
    assert "**" not in result["firstText"]
    assert "12 in / 34 out tokens" in result["meta"]
    assert "openai/gpt-other" in result["meta"]
    assert result["first"][1]["content"] == "".join(HOSTILE_REPLY)

    # The failed reply: its partial rendered, a caveat, Retry as the error allows.
    failed = result["failed"]
    error = result["errorState"]
    assert failed["error"] is True
    assert failed["text"].strip() == "Partial answer that breaks"
    assert error["partial"] == "".join(PARTIAL)
    assert error["code"] in failed["caveat"]
    assert "The text above is what arrived" in failed["caveat"]
    assert failed["retry"] is error["retryable"]
    if error["retryable"]:
        assert result["retried"][-1]["content"] == "Recovered."
    # A refusal before any text is still a bubble that says why.
    assert "No reply: invalid_request: model:" in result["refused"]

    stored = await server.app[STORE].get_messages(result["session"])
    assert [(m.role, m.status) for m in stored][:4] == [
        ("user", "complete"),
        ("assistant", "complete"),
        ("user", "complete"),
        ("assistant", "error"),
    ]
    assert stored[3].content == "".join(PARTIAL)
