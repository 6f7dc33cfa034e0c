// useChatsock() from chatsock-client/react, rendering docs/clients.md's component against real workers.
import assert from "node:assert/strict";
import { after, test } from "node:test";

import "./dom.mjs";
import { URL_A, URL_B } from "./support.mjs";

const { cleanup, fireEvent, render, screen, waitFor } = await import("@testing-library/react");
const { createElement, StrictMode } = await import("react");
const { Chat } = await import("../test-dist/Chat.js");
const { connect } = await import("chatsock-client");

after(cleanup);
const wait = { timeout: 20000 };

async function ask(container, text) {
  fireEvent.change(container.querySelector("input"), { target: { value: text } });
  fireEvent.submit(container.querySelector("form"));
}

test("the docs' Chat component streams a reply, then stops one", async () => {
  const { container, unmount } = render(createElement(StrictMode, null, createElement(Chat, { url: URL_A })));
  await ask(container, "hello from react");
  await waitFor(() => assert.equal(container.querySelector("p.user")?.textContent, "hello from react"), wait);
  await waitFor(() => assert.ok(screen.getByText("Stop")), wait);
  await waitFor(() => assert.ok(screen.getByText("Send")), wait);
  const reply = container.querySelector("p.assistant").textContent;
  assert.match(reply, /^You said: "hello from react"/);
  assert.match(reply, /```python/);

  await ask(container, "stop me from react");
  await waitFor(() => assert.equal(container.querySelectorAll("p.assistant")[1]?.textContent.length > 0, true), wait);
  fireEvent.click(screen.getByText("Stop"));
  await waitFor(() => assert.ok(screen.getByText("Send")), wait);
  const partial = container.querySelectorAll("p.assistant")[1].textContent;
  assert.ok(partial.length > 0 && partial.length < reply.length + 40);

  // What the page shows is what the server stored.
  const client = connect(URL_B, { transport: "http" });
  const sessions = await client.sessions({ limit: 1000 });
  const session = sessions.find((s) => s.title === "hello from react");
  const detail = await client.history(session.session_id);
  assert.deepEqual(detail.messages.map((m) => [m.role, m.status]), [
    ["user", "complete"], ["assistant", "complete"], ["user", "complete"], ["assistant", "stopped"],
  ]);
  assert.equal(detail.messages[1].content, reply);
  assert.equal(detail.messages[3].content, partial);
  client.close();
  unmount();
});

test("useChatsock opens a session in a second tab and follows the reply in flight", async () => {
  const { useChatsock } = await import("chatsock-client/react");
  const first = connect(URL_A);
  const handle = first.send("a reply for two tabs");
  await new Promise((resolve) => handle.on("token", resolve));
  const seen = [];
  function Tab({ sessionId }) {
    const { messages, status } = useChatsock({ url: URL_B, sessionId });
    seen.push(status);
    return createElement("div", null, messages.map((m) => createElement("p", { key: m.id, className: m.role }, m.content)));
  }
  const { container, unmount } = render(createElement(Tab, { sessionId: handle.sessionId }));
  const end = await handle.done;
  await waitFor(() => assert.equal(container.querySelector("p.assistant")?.textContent, end.full_response), wait);
  assert.equal(container.querySelector("p.user").textContent, "a reply for two tabs");
  assert.ok(seen.includes("streaming"), `followed it live: ${[...new Set(seen)]}`);
  first.close();
  unmount();
});

test("an error shows the partial text and an alert; Retry sends again", { skip: !process.env.CHATSOCK_FAILING_URL }, async () => {
  // The upstream (tests/fakes/upstream.py) resets after two pieces, then answers whole.
  const { container, unmount } = render(createElement(Chat, { url: process.env.CHATSOCK_FAILING_URL }));
  await ask(container, "fail please");
  const alert = await screen.findByRole("alert", {}, wait);
  assert.match(alert.textContent, /^provider_error: /);
  assert.equal(container.querySelector("p.assistant").textContent, "Partial answer ", "the partial, not an empty bubble");
  fireEvent.click(screen.getByText("Retry"));
  await waitFor(() => assert.equal(container.querySelector("p.assistant")?.textContent, "Whole answer."), wait);
  assert.equal(screen.queryByRole("alert"), null);
  assert.deepEqual([...container.querySelectorAll("p")].map((p) => p.className), ["user", "assistant"]);
  unmount();
});

test("Regenerate in the docs' Chat component replaces the reply; the old one is a version", async () => {
  const { container, unmount } = render(createElement(Chat, { url: URL_A }));
  await ask(container, "regenerate me from react");
  await waitFor(() => assert.ok(screen.getByText("Regenerate")), wait);
  const reply = container.querySelector("p.assistant").textContent;
  fireEvent.click(screen.getByText("Regenerate"));
  await waitFor(() => assert.ok(screen.getByText("2 versions")), wait);
  await waitFor(() => assert.ok(screen.getByText("Regenerate")), wait);
  assert.deepEqual([...container.querySelectorAll("p")].map((p) => p.className), ["user", "assistant"], "no duplicated turn");
  assert.equal(container.querySelector("p.assistant").textContent, reply, "the demo answers the same again");
  const client = connect(URL_B, { transport: "http" });
  const session = (await client.sessions({ limit: 1000 })).find((s) => s.title === "regenerate me from react");
  const detail = await client.history(session.session_id);
  assert.deepEqual(detail.messages.map((m) => [m.role, m.versions?.length]), [["user", undefined], ["assistant", 1]]);
  client.close();
  unmount();
});

test("useChatsock shows the reasoning, and regenerate() keeps the old reply and its reasoning as a version", async () => {
  const { useChatsock } = await import("chatsock-client/react");
  let chat;
  const seen = [];
  function Thinking() {
    chat = useChatsock({ url: URL_B, reasoning: true });
    seen.push(chat.status);
    return createElement("div", null, chat.messages.map((m) =>
      createElement("div", { key: m.id }, [
        m.reasoning ? createElement("details", { key: "r" }, m.reasoning) : null,
        createElement("p", { key: "c", className: m.role }, m.content),
      ])));
  }
  const { container, unmount } = render(createElement(Thinking));
  await waitFor(() => assert.equal(chat.connection, "connected"), wait);
  chat.send("think in react", { thinkingBudget: 1024, maxTokens: 8 });
  await waitFor(() => assert.ok(container.querySelector("details")?.textContent), wait);
  await waitFor(() => assert.equal(chat.messages[1]?.status, "complete"), wait);
  const [, first] = chat.messages;
  assert.ok(first.reasoning && first.content, "reasoning and text, apart");
  assert.equal(container.querySelector("details").textContent, first.reasoning);
  chat.regenerate({ maxTokens: 4 });
  await waitFor(() => assert.equal(chat.messages[1]?.versions?.length, 1), wait);
  await waitFor(() => assert.equal(chat.status, "idle"), wait);
  const [, second] = chat.messages;
  assert.equal(chat.messages.length, 2, "the turn is not duplicated");
  assert.equal(second.id, first.id);
  assert.equal(second.status, "complete");
  assert.notEqual(second.content, first.content);
  assert.equal(second.reasoning, undefined, "this one did not reason");
  assert.deepEqual(second.versions.map((v) => [v.content, v.reasoning]), [[first.content, first.reasoning]]);
  assert.equal(container.querySelectorAll("p.assistant").length, 1);
  // What the store shows is what the server keeps.
  const reader = connect(URL_A, { transport: "http" });
  const detail = await reader.history(chat.sessionId, { reasoning: true });
  reader.close();
  assert.deepEqual(detail.messages[1].versions.map((v) => [v.content, v.reasoning]), [[first.content, first.reasoning]]);
  assert.equal(detail.messages[1].content, second.content);
  unmount();
});
