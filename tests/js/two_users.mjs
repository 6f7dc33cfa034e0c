// Two users with the official socket.io-client, as users' apps pass tokens:
// io(url, {auth: {token}}) and fetch with `Authorization: Bearer`.
// Usage: node tests/js/two_users.mjs <json-args>
// args: {aliceUrl, bobUrl, alice, bob, expired, forged, shortLived}
// Prints one JSON object with what each saw, then exits.
import { io } from "socket.io-client";

const args = JSON.parse(process.argv[2]);
const open = (url, auth) =>
  io(url, { auth, transports: ["websocket"], reconnection: false, timeout: 10000 });
const record = (socket) => {
  const events = [];
  socket.onAny((name, data) => events.push([name, data]));
  return events;
};
const connected = (socket) =>
  new Promise((resolve) => {
    socket.on("connect", () => resolve({ ok: true }));
    socket.on("connect_error", (err) => resolve({ ok: false, message: err.message, data: err.data }));
  });
const call = (socket, event, payload) =>
  new Promise((resolve) => socket.timeout(10000).emit(event, payload, (err, reply) =>
    resolve(err ? { ok: false, error: { code: "client_timeout" } } : reply)));
const until = (check, ms = 20000) =>
  new Promise((resolve) => {
    const started = Date.now();
    const poll = () => {
      const found = check();
      if (found || Date.now() - started > ms) resolve(found ?? null); else setTimeout(poll, 10);
    };
    poll();
  });
const terminal = (events, streamId) => until(() => events.find(([n, d]) =>
  (n === "chat_complete" || n === "chat_stream_error") && d.stream_id === streamId));
const fetched = async (url, token, init = {}) => {
  const reply = await fetch(url, { ...init, headers: { Authorization: `Bearer ${token}`,
                                                       "Content-Type": "application/json" } });
  return { status: reply.status, body: await reply.text() };
};

const refused = {};
for (const [name, auth] of [["missing", {}], ["expired", { token: args.expired }],
                            ["forged", { token: args.forged }]]) {
  const socket = open(args.aliceUrl, auth);
  refused[name] = await connected(socket);
  socket.close();
}

// A token about to expire: connected now, told and disconnected at its exp.
const short = open(args.aliceUrl, { token: args.shortLived });
const shortEvents = record(short);
const disconnected = new Promise((resolve) => short.on("disconnect", (reason) => resolve(reason)));
const shortConnect = await connected(short);

const alice = open(args.aliceUrl, { token: args.alice });
const aliceEvents = record(alice);
const bob = open(args.bobUrl, { token: args.bob });
const bobEvents = record(bob);
await Promise.all([connected(alice), connected(bob)]);
const ack = await call(alice, "chat_stream", { message: "alice's secret question" });
await until(() => aliceEvents.find(([n, d]) => n === "chat_token" && d.stream_id === ack.stream_id));
const probes = {
  join: await call(bob, "session_join", { session_id: ack.session_id }),
  resume: await call(bob, "chat_resume", { stream_id: ack.stream_id }),
  stop: await call(bob, "chat_stop", { stream_id: ack.stream_id }),
  into: await call(bob, "chat_stream", { message: "bob writes", session_id: ack.session_id }),
  missingJoin: await call(bob, "session_join", { session_id: args.missingSession }),
  missingResume: await call(bob, "chat_resume", { stream_id: args.missingStream }),
  missingStop: await call(bob, "chat_stop", { stream_id: args.missingStream }),
};
const api = `${args.bobUrl}/api/chat`;
const fetches = {
  session: await fetched(`${api}/sessions/${ack.session_id}`, args.bob),
  missingSession: await fetched(`${api}/sessions/${args.missingSession}`, args.bob),
  stream: await fetched(`${api}/stream/${ack.stream_id}`, args.bob),
  missingStream: await fetched(`${api}/stream/${args.missingStream}`, args.bob),
  list: await fetched(`${api}/sessions`, args.bob),
};
const stillRunning = !aliceEvents.some(([n, d]) => n === "chat_complete" && d.stream_id === ack.stream_id);

// Alice again, on bob's worker: she follows her own stream from its start.
const aliceTwo = open(args.bobUrl, { token: args.alice });
const aliceTwoEvents = record(aliceTwo);
await connected(aliceTwo);
const resumed = await call(aliceTwo, "chat_resume", { stream_id: ack.stream_id, after: 0 });
const end = await terminal(aliceEvents, ack.stream_id);
const endTwo = await terminal(aliceTwoEvents, ack.stream_id);
const aliceSession = await fetched(`${api}/sessions/${ack.session_id}`, args.alice);

const reason = await Promise.race([disconnected, new Promise((r) => setTimeout(() => r(null), 15000))]);

const tokensOf = (events) =>
  events.filter(([n, d]) => n === "chat_token" && d.stream_id === ack.stream_id).map(([, d]) => d);
console.log(JSON.stringify({
  refused, ack, probes, fetches, stillRunning, end, endTwo, resumed, bobEvents,
  aliceTokens: tokensOf(aliceEvents), aliceTwoTokens: tokensOf(aliceTwoEvents), aliceSession,
  shortConnect, expiredEvents: shortEvents, disconnectReason: reason,
}));
for (const socket of [alice, aliceTwo, bob, short]) socket.close();
process.exit(0);
