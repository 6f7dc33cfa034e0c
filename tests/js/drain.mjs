// A rolling deploy seen by socket.io-client as users' apps run it: behind a load
// balancer, with socket.io-client's own reconnection. Each socket starts one
// stream; on every reconnect it resumes each stream after the last seq it has.
// Usage: node tests/js/drain.mjs <url> <json-args: {count, message, timeoutMs}>
// Prints {"ready": true} once every stream has a token, then one JSON object
// with each socket's events when every stream has ended.
import { io } from "socket.io-client";

const [url, rawArgs] = process.argv.slice(2);
const args = rawArgs ? JSON.parse(rawArgs) : {};
const count = args.count ?? 5;

const tab = () => {
  const socket = io(url, {
    transports: args.transports ?? ["polling", "websocket"],
    reconnectionDelay: 100,
    reconnectionDelayMax: 500,
    timeout: 10000,
  });
  const state = { socket, events: [], drained: [], resumes: [], connects: 0, streamId: null };
  for (const name of ["chat_token", "chat_complete", "chat_stream_error"]) {
    socket.on(name, (data) => state.events.push([name, data]));
  }
  socket.on("server_draining", (data) => {
    // A reply that ended before the hand-off has nothing to resume.
    state.endedBeforeDrain = state.endedBeforeDrain ?? ended(state);
    state.drained.push(data);
  });
  socket.on("connect", async () => {
    state.connects += 1;
    if (state.connects === 1 || state.streamId === null) return;
    const after = Math.max(0, ...state.events
      .filter(([n, d]) => n === "chat_token" && d.stream_id === state.streamId)
      .map(([, d]) => d.seq));
    // Recorded before the ack: the replay and the end may come ahead of it.
    const resume = { after, reply: null };
    state.resumes.push(resume);
    resume.reply = await socket.timeout(10000).emitWithAck("chat_resume",
      { stream_id: state.streamId, after }).catch((err) => ({ ok: false, error: String(err) }));
  });
  return state;
};

const tabs = Array.from({ length: count }, tab);
const wait = (ms) => new Promise((r) => setTimeout(r, ms));
const ended = (state) => state.events.some(([n, d]) =>
  (n === "chat_complete" || n === "chat_stream_error") && d.stream_id === state.streamId);

setTimeout(() => {
  process.stdout.write(JSON.stringify({ timedOut: true, tabs: tabs.map(view) }) + "\n",
    () => process.exit(1));
}, args.timeoutMs ?? 60000);

const view = (s) => ({ streamId: s.streamId, ack: s.ack, events: s.events, drained: s.drained,
  resumes: s.resumes, connects: s.connects, endedBeforeDrain: s.endedBeforeDrain ?? false,
  // Its end came on the first connection (the drain had not closed it yet): nothing to resume.
  endedBeforeReconnect: s.connects === 1 });

await Promise.all(tabs.map(async (s) => {
  while (!s.socket.connected) await wait(5);
  s.ack = await s.socket.timeout(10000).emitWithAck("chat_stream", { message: args.message });
  s.streamId = s.ack.stream_id ?? null;
  while (s.streamId && !s.events.some(([n, d]) => n === "chat_token" && d.stream_id === s.streamId)) {
    await wait(5);
  }
}));
console.log(JSON.stringify({ ready: true, streams: tabs.map((s) => s.streamId) }));
while (!tabs.every((s) => !s.streamId || ended(s))) await wait(10);
// Every resume sent has its answer (its replay can end the stream before the ack).
while (tabs.some((s) => s.resumes.some((r) => r.reply === null))) await wait(10);
for (const s of tabs) s.socket.close();
// Exit once the whole line is written: a pipe takes it asynchronously.
process.stdout.write(JSON.stringify({ tabs: tabs.map(view) }) + "\n", () => process.exit(0));
