// useChat itself, rendered with @testing-library/react in jsdom, against chatsock.
// Usage: node tests/js/aisdk_react.mjs <json-args: {a, b, graceMs, message}>
//   complete: a component sends on worker A; the reply renders to its end.
//   reload:   a component sends on A, then "reloads": its stop() aborts the fetch
//             and a new component, useChat({resume: true}) against worker B,
//             renders the reply from its start and follows it; its Stop button
//             then stops the stream that A runs.
// Prints one JSON result.
import { JSDOM } from "jsdom";

const dom = new JSDOM("<!doctype html><html><body></body></html>", { url: "http://localhost/" });
globalThis.window = dom.window;
globalThis.document = dom.window.document;
globalThis.navigator ??= dom.window.navigator;  // node 20 has none
globalThis.IS_REACT_ACT_ENVIRONMENT = false;  // the replies arrive outside act(), as in a browser

const React = await import("react");
const { render, fireEvent, cleanup } = await import("@testing-library/react");
const { useChat } = await import("@ai-sdk/react");
const { DefaultChatTransport } = await import("ai");

const args = JSON.parse(process.argv[2] ?? "{}");
const graceMs = args.graceMs ?? 1000;
const run = Math.random().toString(36).slice(2, 8);
const h = React.createElement;
const wait = (ms) => new Promise((r) => setTimeout(r, ms));
const until = async (check, what, ms = 30000) => {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await wait(10);
  }
};

function ChatBox({ id, api, resume, initial, expose }) {
  const transport = React.useMemo(() => new DefaultChatTransport({ api }), [api]);
  const chat = useChat({ id, resume, messages: initial, transport });
  expose(chat);
  return h("div", null,
    chat.messages.map((m) => h("p", { key: m.id, "data-role": m.role, "data-id": m.id },
      m.parts.filter((p) => p.type === "text").map((p) => p.text).join(""))),
    h("span", { "data-status": chat.status }, chat.status),
    h("button", { onClick: () => chat.stop() }, "Stop"));
}

const mount = (props) => {
  const handle = { chat: null };
  const view = render(h(ChatBox, { ...props, expose: (chat) => { handle.chat = chat; } }));
  const reply = () => view.container.querySelector('p[data-role="assistant"]');
  return {
    view, handle,
    text: () => reply()?.textContent ?? "",
    replyId: () => reply()?.getAttribute("data-id") ?? null,
    status: () => view.container.querySelector("span[data-status]").getAttribute("data-status"),
  };
};

const result = {};

// complete
{
  const id = `react-${run}-complete`;
  const box = mount({ id, api: `${args.a}/api/aisdk/chat` });
  await box.handle.chat.sendMessage({ text: `${args.message} 1` });
  await until(() => box.status() === "ready", "the reply to end");
  result.complete = { id, text: box.text(), replyId: box.replyId(), status: box.status() };
  box.view.unmount();
}

// reload
{
  const id = `react-${run}-reload`;
  const first = mount({ id, api: `${args.a}/api/aisdk/chat` });
  const sending = first.handle.chat.sendMessage({ text: `${args.message} 2` });
  await until(() => first.text().length > 0, "the first text");
  const userMessages = first.handle.chat.messages.filter((m) => m.role === "user");
  await first.handle.chat.stop();  // the page goes away: its fetch is aborted
  await sending;
  const firstText = first.text();
  first.view.unmount();
  const second = mount({
    id, api: `${args.b}/api/aisdk/chat`, resume: true, initial: userMessages,
  });
  await until(() => second.text().length > firstText.length, "the resumed text");
  await wait(graceMs + 500);
  const streamingAfterReload = second.status() === "streaming";
  const textBeforeStop = second.text();
  fireEvent.click(second.view.getByText("Stop"));
  await until(() => second.status() === "ready", "the stop");
  result.reload = {
    id, firstText, text: second.text(), textBeforeStop, replyId: second.replyId(),
    streamingAfterReload, status: second.status(),
  };
  second.view.unmount();
}

cleanup();
console.log(JSON.stringify(result));
process.exit(0);
