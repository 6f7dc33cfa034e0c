// useChat's machinery against chatsock: the `Chat` class of @ai-sdk/react (the one
// useChat builds and drives) with the `ai` package's DefaultChatTransport, as an
// app runs them, pointed at /api/aisdk/chat. No rendering: useChat adds React state.
// Usage: node tests/js/aisdk.mjs <json-args: {a, aDirect, b, count, message, graceMs}>
//   a: worker A through a proxy the test drops; aDirect: A itself; b: worker B.
// Chat kinds, `count` of each, all at once:
//   complete:   send on A, stream to the end.
//   drop:       send on A through the proxy; the test drops the connection
//               ("dropped" on stdin); resumeStream() is answered by B.
//   stop:       send on A, stop() after the first text.
//   moved-stop: send on A; a second Chat (a reload, resume: true) resumes on B;
//               the first stops (its stream runs on: resumed elsewhere), then the
//               second stops: B stops the stream that A runs.
// Prints {"ready": true} once every drop chat has text, then one JSON result.
import { Chat } from "@ai-sdk/react";
import { DefaultChatTransport } from "ai";
import { createInterface } from "node:readline";

const args = JSON.parse(process.argv[2] ?? "{}");
const count = args.count ?? 2;
const graceMs = args.graceMs ?? 1000;
const run = Math.random().toString(36).slice(2, 8);
const wait = (ms) => new Promise((r) => setTimeout(r, ms));
const lines = createInterface({ input: process.stdin });
const stdin = [];
lines.on("line", (line) => stdin.push(line));

setTimeout(() => {
  console.log(JSON.stringify({ timedOut: true, chats: views() }));
  process.exit(1);
}, args.timeoutMs ?? 60000);

const transport = (base, resumeBase = base) => new DefaultChatTransport({
  api: `${base}/api/aisdk/chat`,
  prepareReconnectToStreamRequest: ({ id }) => ({
    api: `${resumeBase}/api/aisdk/chat/${encodeURIComponent(id)}/stream`,
  }),
});

const textOf = (chat) => {
  const last = chat.messages.at(-1);
  if (!last || last.role !== "assistant") return "";
  return last.parts.filter((p) => p.type === "text").map((p) => p.text).join("");
};
const until = async (check) => { while (!check()) await wait(5); };

const all = [];
const views = () => all.map((c) => ({
  id: c.id, kind: c.kind, text: c.text ?? textOf(c.chat), status: c.chat.status,
  error: c.chat.error ? String(c.chat.error.message ?? c.chat.error) : null,
  messageId: c.chat.messages.at(-1)?.id, metadata: c.chat.messages.at(-1)?.metadata ?? null,
  errors: c.errors, notes: c.notes,
}));

const newChat = (kind, index, base, resumeBase) => {
  const id = `aisdk-${run}-${kind}-${index}`;
  const state = { id, kind, errors: [], notes: {} };
  state.chat = new Chat({
    id, transport: transport(base, resumeBase),
    onError: (err) => state.errors.push(String(err.message ?? err)),
  });
  all.push(state);
  return state;
};

const message = (i) => ({ text: `${args.message ?? "hello"} ${i}` });

const complete = async (i) => {
  const s = newChat("complete", i, args.aDirect);
  await s.chat.sendMessage(message(i));
};

const dropped = [];
const drop = async (i) => {
  const s = newChat("drop", i, args.a, args.b);
  const sending = s.chat.sendMessage(message(i));
  await until(() => textOf(s.chat).length > 0);
  dropped.push(s);
  await sending;  // ends in an error once the test drops the connection
  s.notes.afterDrop = { status: s.chat.status, text: textOf(s.chat) };
  await s.chat.resumeStream();  // to B
};

const stop = async (i) => {
  const s = newChat("stop", i, args.aDirect);
  const sending = s.chat.sendMessage(message(i));
  await until(() => textOf(s.chat).length > 0);
  await s.chat.stop();
  await sending;
  s.text = textOf(s.chat);
};

const movedStop = async (i) => {
  const first = newChat("moved-first", i, args.aDirect);
  const sending = first.chat.sendMessage(message(i));
  await until(() => textOf(first.chat).length > 0);
  // A reload: the new page has the user's message (from its own store) and resumes.
  const second = { id: first.id, kind: "moved-stop", errors: [], notes: {} };
  all.push(second);
  second.chat = new Chat({
    id: first.id, transport: transport(args.b),
    messages: first.chat.messages.filter((m) => m.role === "user"),
    onError: (err) => second.errors.push(String(err.message ?? err)),
  });
  const resuming = second.chat.resumeStream();
  await until(() => textOf(second.chat).length > 0);
  await first.chat.stop();
  await sending;
  await wait(graceMs + 500);
  // Still streaming after the first tab's grace: the resume on B kept it alive.
  second.notes.streamingAfterFirstStop = second.chat.status === "streaming";
  second.notes.textAfterFirstStop = textOf(second.chat);
  await second.chat.stop();
  await resuming;
  second.text = textOf(second.chat);
};

const jobs = [];
for (let i = 0; i < count; i++) {
  jobs.push(complete(i), drop(i), stop(i), movedStop(i));
}
await until(() => dropped.length === count);
console.log(JSON.stringify({ ready: true, dropped: dropped.map((s) => s.id) }));
await until(() => stdin.includes("dropped"));
await Promise.all(jobs);
console.log(JSON.stringify({ chats: views() }));
lines.close();
process.exit(0);
