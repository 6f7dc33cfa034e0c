// Drives chatsock with the official socket.io-client, as users' apps do.
// Usage: node tests/js/client.mjs <url> <scenario> [json-args]
// Prints one JSON object with what it saw, then exits.
import { io } from "socket.io-client";

const [url, scenario, rawArgs] = process.argv.slice(2);
const args = rawArgs ? JSON.parse(rawArgs) : {};
const transports = args.transports ?? ["websocket"];
const socket = io(url, { transports, reconnection: false, timeout: 10000 });
const events = [];
for (const name of ["chat_stream_start", "chat_token", "chat_complete", "chat_stream_error"]) {
  socket.on(name, (data) => events.push([name, data]));
}

const done = (result) => {
  console.log(JSON.stringify({ ...result, events, transport: socket.io.engine?.transport?.name }));
  socket.close();
  process.exit(0);
};
setTimeout(() => done({ timedOut: true }), args.timeoutMs ?? 20000);

const call = (event, payload) =>
  new Promise((resolve) => socket.timeout(10000).emit(event, payload, (err, reply) =>
    resolve(err ? { ok: false, error: { code: "client_timeout", message: String(err) } } : reply)));

const terminal = (streamId) =>
  new Promise((resolve) => {
    const check = () => {
      const end = events.find(([n, d]) =>
        (n === "chat_complete" || n === "chat_stream_error") && d.stream_id === streamId);
      if (end) resolve(end); else setTimeout(check, 5);
    };
    check();
  });

const scenarios = {
  // Stream one reply to the end.
  async stream() {
    const ack = await call("chat_stream", { message: args.message ?? "hello from node", ...args.extra });
    if (!ack.ok) return done({ ack });
    const end = await terminal(ack.stream_id);
    done({ ack, end });
  },
  // Start a reply, stop it after the first token.
  async stop() {
    const ack = await call("chat_stream", { message: args.message ?? "stop me" });
    while (!events.some(([n]) => n === "chat_token")) await new Promise((r) => setTimeout(r, 5));
    const stopAck = await call("chat_stop", { stream_id: ack.stream_id });
    const end = await terminal(ack.stream_id);
    done({ ack, stopAck, end });
  },
  // Join a session, then resume a stream from `after`.
  async resume() {
    const join = await call("session_join", { session_id: args.session_id });
    const resume = await call("chat_resume", { stream_id: args.stream_id, after: args.after ?? 0 });
    const end = await terminal(args.stream_id);
    done({ join, resume, end });
  },
  // Send malformed requests; the connection must keep working.
  async bad() {
    const replies = [];
    replies.push(await call("chat_stream", { message: 7 }));
    replies.push(await call("chat_stream", "not an object"));
    replies.push(await call("chat_stop", { stream_id: "st_nope" }));
    replies.push(await call("what_is_this", {}));
    const ack = await call("chat_stream", { message: "after the bad ones" });
    const end = await terminal(ack.stream_id);
    done({ replies, ack, end });
  },
};

socket.on("connect_error", (err) => done({ connectError: String(err) }));
socket.on("connect", () => scenarios[scenario]());
