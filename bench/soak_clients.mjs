// The soak's clients (python -m bench.soak): socket.io-client over WebSocket, as users' apps.
// Usage: node bench/soak_clients.mjs <args.json>
//   args: {urls: [w0, w1], lanes, durationMs, connectsPerSecond, tokensMin, tokensMax, rate,
//          users: [jwt per lane], badToken, seed, tag, out, p: {resume, resume2, stop,
//          stopElsewhere, secondTab, delete, churnAuth, churnNoAuth, churnEvent}}
// `lanes` clients each run streams one after another until `durationMs`; per stream,
// drawn from a seeded RNG: disconnects at random points with a chat_resume from the
// last seq on the other worker, a chat_stop (from the same socket, or from another
// socket of the user on the other worker), a second tab (session_join on the other
// worker, chat_resume from 0, followed to the end). Meanwhile `connectsPerSecond` new
// sockets connect (with a valid token, none, or a forged one), maybe send one event,
// and disconnect. Nothing is judged here: every stream's raw record (seqs, tokens,
// terminals, acks, the persisted reply read back through GET /api/chat/sessions/{id})
// is one JSON line in `out`; bench/soak_verify.py checks them. Protocol on stdout:
// {"warm": true}, then wait for a line on stdin, then {"progress": ...} lines and
// {"done": true}.
import { createWriteStream, readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const args = JSON.parse(readFileSync(process.argv[2], "utf8"));
const p = args.p;
const now = () => performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, Math.max(0, ms)));
const out = createWriteStream(args.out);
const emit = (line) => console.log(JSON.stringify(line));

// mulberry32: a small seeded RNG, so a run's choices can be replayed (its timing cannot).
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const counts = { connects: 0, connectFailures: 0, churnOk: 0, churnRefused: 0, churnFailed: 0 };
const problems = []; // client-side trouble that is not a stream's (first few, with a count)
const problem = (what) => {
  counts.problems = (counts.problems ?? 0) + 1;
  if (problems.length < 50) problems.push(what);
};

// One socket, routing each stream's events to the follower registered for it.
// Events of a stream nobody here follows are kept: left over at the end, they are
// events the socket should never have had (a room it should not be in).
class Client {
  constructor(worker, token, timeout = 30000) {
    this.worker = worker;
    this.followers = new Map();
    this.pending = new Map();
    const auth = token ? { token } : undefined;
    this.socket = io(args.urls[worker], {
      transports: ["websocket"], reconnection: false, timeout, forceNew: true, auth,
    });
    for (const name of ["chat_token", "chat_complete", "chat_stream_error"]) {
      this.socket.on(name, (d) => this.route(name, d));
    }
    // Dropped by the server (ping timeout on a starved box, ...): the client resumes.
    this.dropReason = null;
    this.dropped = new Promise((resolve) => {
      this.socket.on("disconnect", (reason) => {
        if (reason === "io client disconnect") return;
        this.dropReason = reason;
        counts.drops = (counts.drops ?? 0) + 1;
        resolve("drop");
      });
    });
  }

  connected() {
    return new Promise((resolve, reject) => {
      this.socket.once("connect", () => { counts.connects++; resolve(this); });
      this.socket.once("connect_error", (err) => reject(err));
    });
  }

  route(name, d) {
    const f = this.followers.get(d.stream_id);
    if (f) f.event(name, d);
    else {
      const list = this.pending.get(d.stream_id) ?? [];
      list.push([name, d]);
      this.pending.set(d.stream_id, list);
    }
  }

  attach(streamId, follower) {
    this.followers.set(streamId, follower);
    for (const [name, d] of this.pending.get(streamId) ?? []) follower.event(name, d);
    this.pending.delete(streamId);
  }

  call(event, payload) {
    return new Promise((resolve) =>
      this.socket.timeout(30000).emit(event, payload, (err, reply) =>
        resolve(err ? { ok: false, error: { code: "client_timeout", message: String(err) } } : reply)));
  }

  close() {
    for (const [id, list] of this.pending) {
      counts.foreignEvents = (counts.foreignEvents ?? 0) + list.length;
      problem(`socket on worker ${this.worker} got ${list.length} events of stream ${id} it never followed`);
    }
    this.pending.clear();
    this.socket.close();
  }
}

async function open(worker, token) {
  for (let attempt = 1; ; attempt++) {
    const client = new Client(worker, token);
    try {
      return await client.connected();
    } catch (err) {
      client.socket.close();
      counts.connectFailures++;
      problem(`connect to worker ${worker} failed (attempt ${attempt}): ${why(err)}`);
      if (attempt >= 3) throw err;
      await sleep(500 * attempt);
    }
  }
}

// What one client saw of one stream, across its sockets (a resume moves it).
class Follower {
  constructor(name) {
    this.name = name;
    this.seqs = [];
    this.tokens = [];
    this.terminals = [];
    this.afterTerminal = 0;
    this.catchUpAfterEnd = 0;
    this.endedBeforeCatchUp = false;
    this.catchUpUpTo = 0; // a second tab: the seq its session_join named
    this.resumePending = false;
    this.catchUpSeen = false;
    this.ended = new Promise((r) => { this.onEnd = r; });
  }

  event(name, d) {
    if (this.written) {
      // Its record is out: anything more is a late duplicate or a second terminal.
      counts.lateEvents = (counts.lateEvents ?? 0) + 1;
      problem(`${name} seq ${d.seq} of stream ${d.stream_id} after its record was written`);
      return;
    }
    const catchUp = name === "chat_token" && d.seq <= this.catchUpUpTo;
    if (this.terminals.length) {
      // A second tab's live terminal may beat the serving of its chat_resume (the stream
      // ended meanwhile): that catch-up then comes after it, still exactly once.
      if (this.endedBeforeCatchUp && catchUp) this.catchUpAfterEnd++;
      else this.afterTerminal++;
    } else if (name !== "chat_token" && this.resumePending && !this.catchUpSeen) {
      this.endedBeforeCatchUp = true;
    }
    if (catchUp && this.resumePending) this.catchUpSeen = true;
    if (name === "chat_token") {
      this.seqs.push(d.seq);
      this.tokens.push(d.token);
      return;
    }
    const { code, stopped, full_response: text, partial, message_id: messageId } = d;
    this.terminals.push({ name, code, stopped, text: text ?? partial, messageId });
    this.onEnd();
  }

  lastSeq() {
    return this.seqs.length ? Math.max(...this.seqs) : 0;
  }

  record() {
    const { name, seqs, tokens, terminals, afterTerminal, catchUpAfterEnd } = this;
    // Keep only a sink for late events: a lane's socket lives for many streams.
    this.written = true;
    this.seqs = this.tokens = this.terminals = null;
    return { name, seqs, tokens, terminals, afterTerminal, catchUpAfterEnd };
  }
}

// Why a connect failed: socket.io-client's message, and the transport's own error under it.
const why = (err) => {
  const cause = err.description?.message ?? err.description?.error?.message;
  return cause ? `${err.message} (${cause})` : err.message;
};

const within = (promise, ms) => Promise.race([promise, sleep(ms).then(() => "timeout")]);
const other = (worker) => 1 - worker;

async function api(worker, token, method, path) {
  const res = await fetch(args.urls[worker] + path, {
    method, headers: { Authorization: `Bearer ${token}` },
  });
  return { status: res.status, body: await res.json().catch(() => null) };
}

// The stored reply, read back once its stream has ended (it is stored before the end is sent).
async function persisted(worker, token, sessionId, streamId) {
  for (let attempt = 0; attempt < 20; attempt++) {
    try {
      const { status, body } = await api(worker, token, "GET", `/api/chat/sessions/${sessionId}`);
      const reply = body?.messages?.find((m) => m.role === "assistant" && m.stream_id === streamId);
      if (status === 200 && reply) return { worker, status: reply.status, content: reply.content };
      if (status !== 200) return { worker, httpStatus: status, error: body?.error?.code };
    } catch (err) {
      problem(`GET session ${sessionId}: ${err.message}`);
    }
    await sleep(250);
  }
  return { worker, status: null, content: null };
}

const totals = { started: 0, ended: 0, resumes: 0, stops: 0, secondTabs: 0, deletes: 0 };
const active = new Set();

class Lane {
  constructor(index) {
    this.index = index;
    this.token = args.users[index % args.users.length];
    this.random = rng(args.seed * 1000003 + index);
    this.worker = index % 2;
    this.client = null;
  }

  async run(deadline) {
    this.client = await open(this.worker, this.token);
    for (let k = 0; now() < deadline; k++) {
      try {
        await this.stream(k);
      } catch (err) {
        // A client-side failure (a connect refused thrice): note it, carry on afresh.
        totals.clientErrors = (totals.clientErrors ?? 0) + 1;
        problem(`lane ${this.index} stream ${k}: ${err.message}`);
        this.client.close();
        this.client = await open(this.worker, this.token);
      }
      await sleep(this.random() * args.gapMs);
    }
    this.client.close();
  }

  async stream(k) {
    const r = this.random;
    const n = args.tokensMin + Math.floor(r() * (args.tokensMax - args.tokensMin + 1));
    const durationMs = (n / args.rate) * 1000;
    const disconnects = r() < p.resume ? (r() < p.resume2 ? 2 : 1) : 0;
    const stop = r() < p.stop ? (r() < p.stopElsewhere ? "elsewhere" : "own") : null;
    const secondTab = r() < p.secondTab;
    const remove = r() < p.delete;
    // Each action at a random point of the stream's expected length (sometimes after it).
    const at = () => r() * durationMs * 1.1;
    const actions = [];
    for (let i = 0; i < disconnects; i++) actions.push({ kind: "resume", at: at() });
    if (stop) actions.push({ kind: "stop", at: at(), from: stop });
    if (secondTab) actions.push({ kind: "tab", at: at() });
    actions.sort((a, b) => a.at - b.at);

    const rec = { lane: this.index, k, n, worker: this.worker, disconnects, stop, secondTab };
    const a = new Follower("A");
    const message = `soak ${args.tag} ${this.index}-${k} n=${n} r=${args.rate}`;
    totals.started++;
    const ack = await this.client.call("chat_stream", { message });
    if (!ack?.ok) {
      rec.ackError = ack?.error?.code ?? "no ack";
      totals.ended++;
      out.write(`${JSON.stringify(rec)}\n`);
      return;
    }
    const streamId = ack.stream_id;
    const sessionId = ack.session_id;
    Object.assign(rec, { streamId, sessionId });
    active.add(streamId);
    this.client.attach(streamId, a);
    const followers = [a];
    const background = [];
    rec.resumes = [];
    const begun = now();
    const resume = async (why) => {
      this.client.close();
      const after = a.lastSeq();
      this.worker = other(this.worker);
      this.client = await open(this.worker, this.token);
      this.client.attach(streamId, a);
      const resumed = await this.client.call("chat_resume", { stream_id: streamId, after });
      rec.resumes.push({ why, after, worker: this.worker, ok: resumed?.ok, status: resumed?.status,
        code: resumed?.error?.code });
      totals.resumes++;
      return resumed?.ok;
    };
    // Resume while the server dropped this client (and the stream has not ended for it).
    const recover = async () => {
      while (this.client.dropReason && !a.terminals.length) {
        if (!(await resume(`dropped: ${this.client.dropReason}`))) return false;
      }
      return true;
    };
    for (const action of actions) {
      await Promise.race([sleep(begun + action.at - now()), this.client.dropped]);
      if (!(await recover())) break;
      await sleep(begun + action.at - now());
      if (action.kind === "resume") {
        if (a.terminals.length) continue; // ended before this point: nothing to resume
        if (!(await resume("random"))) break; // nothing more will come: the verdict says why
      } else if (action.kind === "stop") {
        let stopper = this.client;
        if (action.from === "elsewhere") stopper = await open(other(this.worker), this.token);
        const acked = await stopper.call("chat_stop", { stream_id: streamId });
        if (stopper !== this.client) stopper.close();
        rec.stopAck = { from: action.from, ok: acked?.ok, stopped: acked?.stopped,
          code: acked?.error?.code };
        totals.stops++;
      } else {
        background.push(this.tab(streamId, sessionId, followers, rec));
        totals.secondTabs++;
      }
    }
    const deadline = now() + durationMs * 3 + 60000;
    for (;;) {
      if (rec.resumes.some((x) => !x.ok)) {
        if ((await within(a.ended, 2000)) === "timeout") rec.timedOut = true;
        break;
      }
      const got = await Promise.race([a.ended.then(() => "end"), this.client.dropped,
        sleep(deadline - now()).then(() => "timeout")]);
      if (got === "end") break;
      if (got === "timeout") {
        rec.timedOut = true;
        break;
      }
      await recover();
    }
    await Promise.all(background);
    // A little while for anything that should not come (a duplicate, a second terminal).
    await sleep(200);
    active.delete(streamId);
    rec.persisted = await persisted(other(this.worker), this.token, sessionId, streamId);
    if (remove) {
      const { status } = await api(this.worker, this.token, "DELETE", `/api/chat/sessions/${sessionId}`);
      rec.deleted = status;
      totals.deletes++;
    }
    rec.followers = followers.map((f) => f.record());
    rec.ms = now() - begun;
    totals.ended++;
    out.write(`${JSON.stringify(rec)}\n`);
  }

  // A second tab on the other worker: join the session, fetch the earlier tokens, follow.
  async tab(streamId, sessionId, followers, rec) {
    const b = new Follower("B");
    let client;
    try {
      client = await open(other(this.worker), this.token);
    } catch (err) {
      // The tab could not connect (a saturated box): nothing of it to verify.
      rec.join = { clientError: why(err) };
      return;
    }
    client.attach(streamId, b);
    const joined = await client.call("session_join", { session_id: sessionId });
    rec.join = { ok: joined?.ok, code: joined?.error?.code, live: false };
    if (joined?.ok && joined.active_stream?.stream_id === streamId) {
      rec.join.live = true;
      followers.push(b);
      b.catchUpUpTo = joined.active_stream.seq ?? 0;
      b.endedBeforeCatchUp = b.terminals.length > 0;
      b.resumePending = true;
      const resumed = await client.call("chat_resume", { stream_id: streamId, after: 0 });
      b.resumePending = false;
      rec.join.resume = { ok: resumed?.ok, code: resumed?.error?.code };
      const deadline = now() + 120000;
      while (resumed?.ok) {
        const got = await Promise.race([b.ended.then(() => "end"), client.dropped,
          sleep(deadline - now()).then(() => "timeout")]);
        if (got === "end") break;
        if (got === "timeout") {
          rec.join.timedOut = true;
          break;
        }
        // Dropped: this tab reconnects (same worker) and resumes from what it has.
        client.close();
        client = await open(other(this.worker), this.token);
        client.attach(streamId, b);
        const again = await client.call("chat_resume", { stream_id: streamId, after: b.lastSeq() });
        rec.join.drops = [...(rec.join.drops ?? []), { ok: again?.ok, code: again?.error?.code }];
        if (!again?.ok) break;
      }
    } else if (joined?.ok) {
      // Ended before the join: its reply is in the session's messages, and no event comes.
      const reply = joined.messages.find((m) => m.role === "assistant" && m.stream_id === streamId);
      rec.join.reply = reply ? { status: reply.status, content: reply.content } : null;
      await sleep(300);
      rec.join.events = b.seqs.length + b.terminals.length;
    }
    await sleep(200);
    client.close();
  }
}

// Connection churn: sockets that connect (with a valid token, none, or a forged one),
// maybe send one event, and go.
async function churnOne(random) {
  const worker = random() < 0.5 ? 0 : 1;
  const roll = random();
  const kind = roll < p.churnAuth ? "auth" : roll < p.churnAuth + p.churnNoAuth ? "none" : "forged";
  const token = kind === "auth" ? args.users[Math.floor(random() * args.users.length)]
    : kind === "forged" ? args.badToken : null;
  const client = new Client(worker, token, 10000);
  try {
    await client.connected();
    if (kind !== "auth") {
      counts.churnFailed++;
      problem(`a churn socket with ${kind === "none" ? "no" : "a forged"} token was let in`);
    } else {
      if (random() < p.churnEvent) {
        const reply = await client.call("session_join", { session_id: `ses_absent${Math.floor(random() * 1e9)}` });
        if (reply?.error?.code !== "not_found") {
          counts.churnFailed++;
          problem(`churn session_join of an absent session answered ${JSON.stringify(reply)}`);
        }
      }
      await sleep(random() * 500);
      counts.churnOk++;
    }
  } catch (err) {
    if (kind !== "auth" && err.data?.code === "unauthorized") counts.churnRefused++;
    else {
      counts.churnConnectFailed = (counts.churnConnectFailed ?? 0) + 1;
      problem(`churn connect (${kind}) to worker ${worker}: ${why(err)}`);
    }
  } finally {
    client.socket.close();
  }
}

// Open loop at `connectsPerSecond`, but with at most a second's worth in flight: on a
// saturated box the rest are skipped (and counted), not piled up behind a full backlog.
async function churn(deadline) {
  const random = rng(args.seed * 7919 + 1);
  const begin = now();
  const running = new Set();
  const cap = Math.max(20, args.connectsPerSecond);
  let due = 0;
  counts.churnLaunched = 0;
  counts.churnSkipped = 0;
  while (now() < deadline) {
    const target = Math.floor(((now() - begin) / 1000) * args.connectsPerSecond);
    for (; due < target; due++) {
      if (running.size >= cap) {
        counts.churnSkipped++;
        continue;
      }
      const one = churnOne(random).finally(() => running.delete(one));
      running.add(one);
      counts.churnLaunched++;
    }
    await sleep(10);
  }
  await Promise.all(running);
  counts.churnSeconds = (now() - begin) / 1000;
}

async function warm() {
  // One short stream per worker: lazy imports and first connections are not a leak.
  await Promise.all(args.urls.map(async (_, w) => {
    const lane = new Lane(w);
    lane.client = await open(w, lane.token);
    const ack = await lane.client.call("chat_stream", { message: `soak ${args.tag} warm${w} n=3 r=50` });
    if (!ack?.ok) throw new Error(`warm-up stream on worker ${w} refused: ${ack?.error?.code}`);
    const f = new Follower("A");
    lane.client.attach(ack.stream_id, f);
    await within(f.ended, 30000);
    await persisted(w, lane.token, ack.session_id, ack.stream_id);
    await api(w, lane.token, "DELETE", `/api/chat/sessions/${ack.session_id}`);
    lane.client.close();
  }));
}

async function main() {
  await warm();
  emit({ warm: true });
  await new Promise((resolve) => createInterface({ input: process.stdin }).once("line", resolve));
  const begin = now();
  const deadline = begin + args.durationMs;
  const ticker = setInterval(() => emit({ progress: {
    s: Math.round((now() - begin) / 1000), active: active.size, ...totals, ...counts,
  } }), 10000);
  // Lanes start spread over the first seconds, not in one burst.
  const spread = Math.min(30000, args.durationMs / 4);
  const lanes = Array.from({ length: args.lanes }, (_, i) =>
    sleep((spread * i) / args.lanes).then(() => new Lane(i).run(deadline)));
  const results = await Promise.allSettled([...lanes, churn(deadline)]);
  clearInterval(ticker);
  for (const r of results) if (r.status === "rejected") problem(`a lane failed: ${r.reason?.stack ?? r.reason}`);
  const summary = { ...totals, ...counts, problems, seconds: (now() - begin) / 1000 };
  out.end(`${JSON.stringify({ summary })}\n`, () => {
    emit({ done: true });
    process.exit(0);
  });
}

// A promise of a lane that nobody awaits any more must not end the whole run.
process.on("unhandledRejection", (err) => problem(`unhandled: ${err?.stack ?? err}`));

main().catch((err) => {
  console.error(err.stack ?? String(err));
  process.exit(1);
});
