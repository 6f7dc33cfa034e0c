// The bench's load generator: socket.io-client over WebSocket, as users' apps connect.
// Usage: node bench/loadgen.mjs '<json args>'
//   args: {urls: [..], connections, streams, tokens, rate, rampMs, serial, tag, out, timeoutMs}
// Steps, each answered by a JSON line on stdout and started by a line on stdin
// (the runner measures the workers in between):
// 1. one socket per worker runs a short warm-up stream: {"warm": n};
// 2. `connections` more sockets connect, round robin over `urls`: {"connected": n};
// 3. with streams = 0 (the idle run) everything closes; otherwise `streams`
//    chat_stream requests start, spread over the sockets across `rampMs`; after
//    every stream's end, what it saw goes to `out` as JSON: {"done": true}.
// Every stream is checked: seq contiguous from 1, the tokens joined equal to
// chat_complete.full_response. Times are wall-clock ms (timeOrigin + now), the
// clock the fake upstream stamps its deltas with.
import { writeFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const args = JSON.parse(process.argv[2] ?? "{}");
const now = () => performance.timeOrigin + performance.now();
const lines = createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once("line", resolve));

const open = (url) =>
  new Promise((resolve, reject) => {
    const socket = io(url, { transports: ["websocket"], reconnection: false, timeout: 30000 });
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) => reject(new Error(`${url}: ${err.message}`)));
  });

// Connect a few at a time: a burst of thousands overflows the listen backlog.
// Socket k (counting from `first`) goes to urls[k % urls.length].
async function connectAll(urls, count, first = 0) {
  const sockets = new Array(count);
  let next = 0;
  const lane = async () => {
    while (next < count) {
      const i = next++;
      sockets[i] = await open(urls[(first + i) % urls.length]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(64, count) }, lane));
  return sockets;
}

// Everything a stream's events say, by stream_id (tokens may beat the ack).
const seen = new Map();
const record = (id) => {
  let s = seen.get(id);
  if (!s) {
    s = { chunks: [], seqs: [], text: [], offset: 0, end: null, endAt: null };
    seen.set(id, s);
  }
  return s;
};
const waiters = new Map();

function listen(socket) {
  socket.on("chat_token", (d) => {
    const at = now();
    const s = record(d.stream_id);
    s.seqs.push(d.seq);
    s.text.push(d.token);
    s.offset += d.token.length;
    s.chunks.push([s.offset, at]);
  });
  const ended = (name) => (d) => {
    const s = record(d.stream_id);
    s.end = [name, d];
    s.endAt = now();
    waiters.get(d.stream_id)?.();
  };
  socket.on("chat_complete", ended("chat_complete"));
  socket.on("chat_stream_error", ended("chat_stream_error"));
}

const call = (socket, event, payload) =>
  new Promise((resolve) =>
    socket.timeout(30000).emit(event, payload, (err, reply) =>
      resolve(err ? { ok: false, error: { code: "client_timeout", message: String(err) } } : reply),
    ),
  );

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function runStream(socket, worker, i, deadline, tokens = args.tokens, rate = args.rate) {
  const message = `bench ${args.tag} ${i} n=${tokens} r=${rate}`;
  const emitAt = now();
  const ack = await call(socket, "chat_stream", { message });
  const result = { i, worker, message, emitAt, ackAt: now(), ack };
  if (!ack?.ok) return { ...result, ok: false, textOk: false, why: `ack ${ack?.error?.code}` };
  const s = record(ack.stream_id);
  if (!s.end) {
    await new Promise((resolve) => {
      waiters.set(ack.stream_id, resolve);
      setTimeout(resolve, Math.max(0, deadline - now()));
    });
  }
  // Short reasons: the run counts streams by reason.
  const failures = [];
  if (!s.end) failures.push("no terminal event before the deadline");
  else if (s.end[0] !== "chat_complete") failures.push(`${s.end[0]} ${s.end[1].code}`);
  const seqOk = s.seqs.every((seq, k) => seq === k + 1);
  if (!seqOk) failures.push("seq not contiguous from 1");
  const complete = s.end && s.end[0] === "chat_complete";
  const textOk = !complete || s.text.join("") === s.end[1].full_response;
  if (!textOk) failures.push("tokens joined differ from full_response");
  return {
    ...result,
    ok: failures.length === 0,
    why: failures.join("; "),
    textOk: seqOk && textOk,
    firstTokenAt: s.chunks.length ? s.chunks[0][1] : null,
    endAt: s.endAt,
    tokens: s.end?.[1]?.tokens ?? null,
    chunks: s.chunks,
  };
}

async function main() {
  const connections = args.connections ?? args.streams;
  // One short stream per worker first: lazy imports and the first upstream
  // connection are not what a scenario measures.
  const warmSockets = await connectAll(args.urls, args.urls.length);
  warmSockets.forEach(listen);
  const warm = await Promise.all(
    warmSockets.map((socket, w) => runStream(socket, w, `warmup${w}`, now() + 60000, 3, 100)),
  );
  const cold = warm.filter((r) => !r.ok);
  if (cold.length) throw new Error(`a warm-up stream failed: ${cold[0].why}`);
  console.log(JSON.stringify({ warm: warmSockets.length }));
  await nextLine();
  const started = now();
  const rest = await connectAll(args.urls, connections, warmSockets.length);
  rest.forEach(listen);
  const sockets = warmSockets.concat(rest);
  console.log(JSON.stringify({ connected: sockets.length, ms: now() - started }));
  await nextLine();
  if (!args.streams) {
    sockets.forEach((s) => s.close());
    console.log(JSON.stringify({ done: true }));
    process.exit(0);
  }
  const begin = now();
  const cpuBefore = process.cpuUsage();
  const deadline = begin + (args.timeoutMs ?? 120000);
  const ramp = args.rampMs ?? 0;
  const runs = [];
  for (let i = 0; i < args.streams; i++) {
    const at = begin + (ramp * i) / args.streams;
    if (at > now()) await sleep(at - now());
    const k = i % sockets.length;
    const run = runStream(sockets[k], k % args.urls.length, i, deadline);
    runs.push(run);
    if (args.serial) await run; // one at a time: an idle worker's time to first token
  }
  const streams = await Promise.all(runs);
  const finished = now();
  const cpu = process.cpuUsage(cpuBefore);
  const cpuS = (cpu.user + cpu.system) / 1e6;
  writeFileSync(args.out, JSON.stringify({ begin, finished, cpuS, streams }));
  sockets.forEach((s) => s.close());
  console.log(JSON.stringify({ done: true }));
  process.exit(0);
}

main().catch((err) => {
  console.error(err.stack ?? String(err));
  process.exit(1);
});
