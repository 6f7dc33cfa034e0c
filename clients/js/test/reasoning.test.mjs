// Reasoning streams in chatsock-client (both transports), against real workers
// (tests/test_js_client.py). The demo provider reasons before it answers when a
// request asks for a thinking budget.
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";

import { connect, formatEventId, parseEventId } from "chatsock-client";

import { URL_A, URL_B, checkReply, record, until } from "./support.mjs";

// A short answer after the thinking keeps each test about a second long.
const THINK = { thinkingBudget: 1024, maxTokens: 12 };
const clients = [];
const open = (url, options = {}) => {
  const client = connect(url, { socketOptions: { reconnectionDelay: 50, reconnectionDelayMax: 200 }, ...options });
  clients.push(client);
  return client;
};
after(() => {
  for (const client of clients) client.close();
});

// Independent of each other: run at once, to keep the suite short.
describe("reasoning streams", { concurrency: true }, () => {
  /** Records the reasoning events a handle delivers, and the order of both kinds. */
  function recordReasoning(handle) {
    const seqs = [];
    const pieces = [];
    const kinds = [];
    handle.on("reasoning", (text, event) => {
      seqs.push(event.seq);
      pieces.push(text);
      if (kinds.at(-1) !== "reasoning") kinds.push("reasoning");
    });
    handle.on("token", () => {
      if (kinds.at(-1) !== "token") kinds.push("token");
    });
    return { seqs, pieces, kinds };
  }

  const oneToN = (seqs) => Array.from({ length: seqs.length }, (_, i) => i + 1);

  /** Both sequences whole and once, and the reasoning stored apart from the text. */
  async function checkReasoning(client, handle, seen, thought) {
    const end = await checkReply(client, handle, seen);
    assert.ok(thought.seqs.length > 1, "reasoning arrived");
    assert.deepEqual(thought.seqs, oneToN(thought.seqs), "reasoning seqs 1..N, no gap, no duplicate");
    assert.equal(thought.pieces.join(""), handle.reasoning);
    assert.equal(end.reasoning_chars, handle.reasoning.length, "chat_complete counts the reasoning sent");
    const detail = await client.history(end.session_id, { reasoning: true });
    const stored = detail.messages.find((m) => m.message_id === end.message_id);
    assert.equal(stored.reasoning, handle.reasoning, "stored apart from the text");
    assert.equal(stored.content, end.full_response);
    return end;
  }

  test("an opted-in stream delivers its reasoning, then its text, each in order and once", async () => {
    const client = open(URL_A, { reasoning: true });
    const handle = client.send("think, then answer", THINK);
    const seen = record(handle);
    const thought = recordReasoning(handle);
    const iterated = { text: "", reasoning: "" };
    await Promise.all([
      (async () => {
        for await (const piece of handle) iterated.text += piece;
      })(),
      (async () => {
        for await (const piece of handle.reasoningChunks()) iterated.reasoning += piece;
      })(),
    ]);
    const end = await checkReasoning(client, handle, seen, thought);
    assert.deepEqual(thought.kinds, ["reasoning", "token"], "the reasoning comes first");
    assert.equal(iterated.text, end.full_response, "the async iterator is text only");
    assert.equal(iterated.reasoning, handle.reasoning);
    assert.ok(!end.full_response.includes(handle.reasoning.slice(0, 20)), "the text holds no reasoning");
    assert.ok(end.reasoning_ms >= 0);
    const plain = await client.history(end.session_id, { reasoning: false });
    assert.equal(plain.messages.find((m) => m.message_id === end.message_id).reasoning, undefined);
  });

  test("a client without the option sees no reasoning; a second tab that opts in sees all of it", async () => {
    const client = open(URL_A);
    const events = [];
    client.socket.onAny((name) => events.push(name));
    const handle = client.send("think without showing it", THINK);
    const seen = record(handle);
    const second = open(URL_B);
    const early = new Promise((resolve) => handle.on("accepted", resolve));
    await early;
    const joined = await second.join(handle.sessionId, { reasoning: true });
    assert.ok(joined.active, "the reply is in flight");
    const end = await checkReply(client, handle, seen);
    assert.equal(handle.reasoning, "");
    assert.ok(!events.includes("chat_reasoning"), `no chat_reasoning reached the socket: ${[...new Set(events)]}`);
    assert.ok(end.reasoning_chars > 0, "the model did reason");
    const theirs = await joined.active.done;
    assert.equal(theirs.full_response, end.full_response);
    assert.equal(joined.active.reasoning.length, end.reasoning_chars, "the second tab has the whole reasoning, once");
    const detail = await second.history(end.session_id, { reasoning: true });
    assert.equal(detail.messages.find((m) => m.message_id === end.message_id).reasoning, joined.active.reasoning);
  });

  async function engineCloseMidReasoning(urlAfter, count) {
    const made = Array.from({ length: count }, (_, i) => {
      const client = open(URL_A, { nextUrl: () => urlAfter, reasoning: true });
      const reconnects = [];
      client.on("connection", (status) => reconnects.push(status));
      const handle = client.send(`survive a drop while thinking ${i} ${Math.random()}`, THINK);
      const cut = {};
      // Cut at the second reasoning event: the text has not started (the demo thinks first).
      handle.on("reasoning", (_, event) => {
        if (event.seq !== 2 || cut.at) return;
        cut.at = { seq: handle.lastSeq, reasoningSeq: handle.lastReasoningSeq };
        client.socket.io.engine.close();
      });
      return { client, handle, seen: record(handle), thought: recordReasoning(handle), reconnects, cut };
    });
    for (const { client, handle, seen, thought, reconnects, cut } of made) {
      await checkReasoning(client, handle, seen, thought);
      assert.deepEqual(cut.at, { seq: 0, reasoningSeq: 2 }, "cut mid-reasoning");
      assert.ok(reconnects.includes("reconnecting"), `reconnected: ${reconnects}`);
      assert.equal(client.socket.io.engine.port, new URL(urlAfter).port, "reconnected where nextUrl said");
    }
  }

  test("a forced engine close mid-reasoning resumes both sequences, no gap, no duplicate (one worker)", async () => {
    await engineCloseMidReasoning(URL_A, 6);
  });

  test("a forced engine close mid-reasoning resumes both sequences on the other worker", async () => {
    assert.notEqual(URL_A, URL_B, "two workers");
    await engineCloseMidReasoning(URL_B, 6);
  });

  test("SSE ids: <seq> and <seq>.<reasoning seq>", () => {
    assert.deepEqual(parseEventId("12"), { seq: 12, reasoningSeq: undefined });
    assert.deepEqual(parseEventId("0.3"), { seq: 0, reasoningSeq: 3 });
    for (const bad of ["1.", "x.1", "", undefined, "-1"]) assert.equal(parseEventId(bad), undefined, String(bad));
    assert.equal(formatEventId(4), "4");
    assert.equal(formatEventId(4, 0), "4.0");
  });

  /** A fetch whose first event stream is cut after `reasoning` chat_reasoning events; later requests go to `to`. */
  function cutMidReasoning({ reasoning, to, log }) {
    let cut = false;
    return async (input, init = {}) => {
      const url = new URL(String(input));
      if (cut && to) url.host = new URL(to).host;
      log.push({ method: init.method ?? "GET", url, lastEventId: new Headers(init.headers).get("Last-Event-ID") });
      const response = await fetch(url, init);
      if (cut || !(response.headers.get("Content-Type") ?? "").startsWith("text/event-stream")) return response;
      cut = true;
      const source = response.body.getReader();
      const decoder = new TextDecoder();
      let seen = 0;
      const ids = [];
      const body = new ReadableStream({
        async pull(controller) {
          const { value, done } = await source.read();
          if (done) return controller.close();
          const text = decoder.decode(value, { stream: true });
          seen += (text.match(/event: chat_reasoning/g) ?? []).length;
          ids.push(...[...text.matchAll(/^id: (.*)$/gm)].map((m) => m[1]));
          controller.enqueue(value);
          if (seen >= reasoning) {
            log.push({ ids });
            await source.cancel();
            controller.error(new TypeError("network error: connection reset"));
          }
        },
        cancel: () => source.cancel(),
      });
      return new Response(body, { status: response.status, headers: response.headers });
    };
  }

  for (const [name, to] of [["the same worker", undefined], ["the other worker", URL_B]]) {
    test(`http: a response dropped mid-reasoning resumes with Last-Event-ID <seq>.<reasoning seq> on ${name}`, async () => {
      const log = [];
      const client = open(URL_A, { transport: "http", reasoning: true, fetch: cutMidReasoning({ reasoning: 3, to, log }) });
      const handle = client.send(`cut my thinking over http on ${name}`, THINK);
      const seen = record(handle);
      const thought = recordReasoning(handle);
      await checkReasoning(client, handle, seen, thought);
      const ids = log.find((entry) => entry.ids).ids;
      assert.deepEqual(ids.slice(0, 3), ["0.1", "0.2", "0.3"], "the ids name both sequences");
      const resumes = log.filter((r) => r.method === "GET" && r.url.pathname.startsWith("/api/chat/stream/"));
      assert.ok(resumes.length >= 1, JSON.stringify(log));
      const position = parseEventId(resumes[0].lastEventId);
      assert.equal(position.seq, 0);
      assert.ok(position.reasoningSeq >= 3, resumes[0].lastEventId);
      assert.equal(resumes[0].url.searchParams.get("reasoning"), "1");
    });
  }

  test("http: a client without the option gets plain ids and no reasoning", async () => {
    const client = open(URL_A, { transport: "http" });
    const handle = client.send("think quietly over http", THINK);
    const seen = record(handle);
    const end = await checkReply(client, handle, seen);
    assert.equal(handle.reasoning, "");
    assert.ok(end.reasoning_chars > 0);
    const detail = await client.history(end.session_id);
    assert.equal(detail.messages.find((m) => m.message_id === end.message_id).reasoning, undefined);
  });

  test("resume(streamId, after, {afterReasoning}) after a reload sends the rest of both, once", async () => {
    const client = open(URL_A, { reasoning: true });
    const handle = client.send("reload me while thinking", THINK);
    await until(() => handle.lastReasoningSeq >= 3);
    const reloaded = open(URL_B, { reasoning: true });
    const resumed = reloaded.resume(handle.streamId, 0, { epoch: handle.epoch, afterReasoning: 2 });
    const thought = recordReasoning(resumed);
    const end = await resumed.done;
    assert.equal(thought.seqs[0], 3);
    assert.deepEqual(thought.seqs, Array.from({ length: thought.seqs.length }, (_, i) => i + 3));
    assert.equal(resumed.text, end.full_response);
    const mine = await handle.done;
    assert.ok(handle.reasoning.endsWith(resumed.reasoning) && resumed.reasoning.length < handle.reasoning.length);
    assert.equal(mine.full_response, end.full_response);
  });

  // Server bug (reported): a socket already in the session's room that opts in with
  // session_join {reasoning: true} mid-reasoning is told reasoning_seq 0, and
  // chat_resume {reasoning: true, after_reasoning: 0} sends none of the earlier reasoning.
  test("joining with reasoning a session whose reply this client follows without it fills the reasoning from seq 1", async () => {
    const client = open(URL_A);
    const handle = client.send("opt in halfway", THINK);
    const seen = record(handle);
    const thought = recordReasoning(handle);
    await until(() => handle.streamId, 20000, "the ack");
    const joined = await client.join(handle.sessionId, { reasoning: true });
    assert.equal(joined.active, handle, "the same handle");
    await checkReasoning(client, handle, seen, thought);
  });
});
