// Many concurrent streams with the official socket.io-client, for tests/test_scale.py.
// Usage: node tests/js/scale.mjs <json-args>
// args: {ownerUrls, streams, streamsPerSocket, followUrls, rampMs, withinMs, prefix}
// - ownerUrls: starter sockets connect to these in turn; each starts streamsPerSocket
//   streams, each in a session of its own (message `${prefix} ${index}`), all running at once;
// - followUrls (optional): for every stream, a second socket (a second tab) on these in turn
//   does session_join with `after: 0` (the earlier tokens come with the join, ahead of
//   the end), then (if it names the stream active) chat_resume after 0, which then
//   has nothing more to send;
// - starts are spread evenly over rampMs; every socket waits for its streams' terminals
//   up to withinMs.
// Prints one JSON object: {streams, sockets, problems}; sockets[i].events holds every event
// the socket received, so the test checks the streams itself.
import { io } from "socket.io-client";

const args = JSON.parse(process.argv[2]);
const TERMINALS = new Set(["chat_complete", "chat_stream_error"]);
const sockets = [];
const problems = [];

const open = (url, role) => {
  const socket = io(url, { transports: ["websocket"], reconnection: false, timeout: 20000 });
  const entry = { url, role, events: [], terminals: new Map(), disconnect: null };
  socket.onAny((name, data) => {
    entry.events.push([name, data]);
    if (TERMINALS.has(name) && data && data.stream_id) {
      entry.terminals.set(data.stream_id, (entry.terminals.get(data.stream_id) ?? 0) + 1);
    }
  });
  socket.on("disconnect", (reason) => { entry.disconnect = reason; });
  sockets.push(entry);
  const connected = new Promise((resolve) => {
    socket.on("connect", () => resolve(true));
    socket.on("connect_error", (err) => {
      problems.push(`${role} socket to ${url}: connect_error ${err.message}`);
      resolve(false);
    });
  });
  return { socket, entry, index: sockets.length - 1, connected };
};
const call = (socket, event, payload) =>
  new Promise((resolve) => socket.timeout(30000).emit(event, payload, (err, reply) =>
    resolve(err ? { ok: false, error: { code: "client_timeout", message: String(err) } } : reply)));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const until = async (check, ms) => {
  const deadline = Date.now() + ms;
  while (!check() && Date.now() < deadline) await sleep(50);
  return check();
};

const owners = [];
for (let i = 0; i * args.streamsPerSocket < args.streams; i += 1) {
  owners.push(open(args.ownerUrls[i % args.ownerUrls.length], "owner"));
}
await Promise.all(owners.map((o) => o.connected));

const streams = [];
const started = Date.now();
const follow = async (stream, number) => {
  const url = args.followUrls[number % args.followUrls.length];
  const tab = open(url, "follower");
  stream.follower = tab.index;
  if (!(await tab.connected)) return;
  stream.join = await call(tab.socket, "session_join", { session_id: stream.ack.session_id, after: 0 });
  // As docs/protocol.md says: with no active stream, the reply is in the join's messages.
  if (!stream.join.ok || !stream.join.active_stream) return;
  stream.resume = await call(tab.socket, "chat_resume", { stream_id: stream.ack.stream_id, after: 0 });
};
const run = async (owner, index) => {
  const delay = args.rampMs * index / args.streams - (Date.now() - started);
  if (delay > 0) await sleep(delay);
  const message = `${args.prefix} ${index}`;
  const stream = { index, message, owner: owner.index, follower: null, ack: null, join: null, resume: null };
  streams.push(stream);
  stream.ack = await call(owner.socket, "chat_stream", { message, client_message_id: `scale-${index}` });
  if (stream.ack.ok && args.followUrls) await follow(stream, index);
};
await Promise.all(Array.from({ length: args.streams }, (_, index) =>
  run(owners[Math.floor(index / args.streamsPerSocket)], index)));

// Every stream that was accepted ends on its owner, and on its follower if it has one.
const waiting = () => streams.flatMap((s) => {
  if (!s.ack?.ok) return [];
  const views = [s.owner];
  if (s.follower !== null && s.resume?.ok) views.push(s.follower);
  return views.filter((v) => !sockets[v].terminals.has(s.ack.stream_id) && sockets[v].disconnect === null);
});
await until(() => waiting().length === 0, args.withinMs);
// A moment for a late duplicate terminal or token to show itself.
await sleep(500);

for (const entry of sockets) {
  if (entry.disconnect !== null) problems.push(`${entry.role} socket to ${entry.url}: disconnected (${entry.disconnect})`);
}
streams.sort((a, b) => a.index - b.index);
const out = JSON.stringify({
  streams,
  sockets: sockets.map(({ url, role, events }) => ({ url, role, events })),
  problems,
});
// Exit only once the (large) line is written: the sockets would keep node alive.
process.stdout.write(`${out}\n`, () => process.exit(0));
