// useChatsock() from chatsock-client/vue: docs/clients.md's single-file component against real workers.
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import "./dom.mjs";
import { URL_A, URL_B, until } from "./support.mjs";

const { compileScript, parse } = await import("vue/compiler-sfc");
const { createApp, h, nextTick } = await import("vue");
const { connect } = await import("chatsock-client");
const { useChatsock } = await import("chatsock-client/vue");

/** Compiles test/components/Chat.vue with Vue's own SFC compiler and imports it. */
async function loadChatVue() {
  const source = readFileSync(new URL("./components/Chat.vue", import.meta.url), "utf8");
  const { descriptor } = parse(source, { filename: "Chat.vue" });
  const script = compileScript(descriptor, { id: "chat", inlineTemplate: true });
  const out = new URL("../test-dist/", import.meta.url);
  mkdirSync(fileURLToPath(out), { recursive: true });
  const file = new URL("Chat.vue.mjs", out);
  writeFileSync(file, script.content);
  return (await import(file)).default;
}

function mount(component, props) {
  const root = document.createElement("div");
  document.body.append(root);
  const app = createApp(component, props);
  app.mount(root);
  return { root, unmount: () => { app.unmount(); root.remove(); } };
}

async function ask(root, text) {
  const input = root.querySelector("input");
  input.value = text;
  input.dispatchEvent(new window.Event("input"));
  await nextTick();
  root.querySelector("form").dispatchEvent(new window.Event("submit", { cancelable: true }));
  await nextTick();
}

const button = (root, label) => [...root.querySelectorAll("button")].find((b) => b.textContent === label);

test("the docs' Chat.vue streams a reply, then stops one", async () => {
  const Chat = await loadChatVue();
  const { root, unmount } = mount(Chat, { url: URL_A });
  await ask(root, "hello from vue");
  assert.equal(root.querySelector("p.user").textContent, "hello from vue");
  await until(() => button(root, "Stop"), 20000, "Stop");
  await until(() => button(root, "Send"), 20000, "the end of the reply");
  const reply = root.querySelector("p.assistant").textContent;
  assert.match(reply, /^You said: "hello from vue"/);

  await ask(root, "stop me from vue");
  await until(() => root.querySelectorAll("p.assistant")[1]?.textContent, 20000, "a first token");
  button(root, "Stop").click();
  await until(() => button(root, "Send"), 20000, "stopped");
  const partial = root.querySelectorAll("p.assistant")[1].textContent;

  const client = connect(URL_B, { transport: "http" });
  const session = (await client.sessions({ limit: 1000 })).find((s) => s.title === "hello from vue");
  const detail = await client.history(session.session_id);
  assert.deepEqual(detail.messages.map((m) => [m.role, m.status]), [
    ["user", "complete"], ["assistant", "complete"], ["user", "complete"], ["assistant", "stopped"],
  ]);
  assert.equal(detail.messages[1].content, reply);
  assert.equal(detail.messages[3].content, partial);
  client.close();
  unmount();
});

test("the composable opens a session in a second tab and follows the reply in flight", async () => {
  const first = connect(URL_A);
  const handle = first.send("a reply for two vue tabs");
  await new Promise((resolve) => handle.on("token", resolve));
  const statuses = new Set();
  const Tab = {
    setup() {
      const chat = useChatsock({ url: URL_B, sessionId: handle.sessionId });
      return () => {
        statuses.add(chat.status.value);
        return h("div", chat.messages.value.map((m) => h("p", { key: m.id, class: m.role }, m.content)));
      };
    },
  };
  const { root, unmount } = mount(Tab);
  const end = await handle.done;
  await until(() => root.querySelector("p.assistant")?.textContent === end.full_response, 20000, "the whole reply");
  assert.equal(root.querySelector("p.user").textContent, "a reply for two vue tabs");
  assert.ok(statuses.has("streaming"), [...statuses].join());
  first.close();
  unmount();
});

test("Regenerate in the docs' Chat.vue replaces the reply; the old one is a version", async () => {
  const Chat = await loadChatVue();
  const { root, unmount } = mount(Chat, { url: URL_B });
  await ask(root, "regenerate me from vue");
  await until(() => button(root, "Regenerate"), 20000, "the end of the reply");
  const reply = root.querySelector("p.assistant").textContent;
  button(root, "Regenerate").click();
  await until(() => root.querySelector("small")?.textContent === "2 versions", 20000, "a second version");
  await until(() => button(root, "Regenerate"), 20000, "the end of the new reply");
  assert.deepEqual([...root.querySelectorAll("p")].map((p) => p.className), ["user", "assistant"], "no duplicated turn");
  assert.equal(root.querySelector("p.assistant").textContent, reply, "the demo answers the same again");
  unmount();
});
