// chatsock-client's `http` transport (fetch + SSE), against real workers.
import assert from "node:assert/strict";
import { after, test } from "node:test";

import { ChatsockError, SseParser, connect } from "chatsock-client";

import { URL_A, URL_B, checkReply, firstToken, record } from "./support.mjs";

const clients = [];
const open = (url, options = {}) => {
  const client = connect(url, { transport: "http", ...options });
  clients.push(client);
  return client;
};
after(() => {
  for (const client of clients) client.close();
});

/**
 * A fetch whose first streamed response is cut after `tokens` chat_token
 * events, as a dropped connection would; later requests go to `to` (a
 * load balancer choosing another worker). `log` lists each request.
 */
function cuttingFetch({ tokens = 2, to, log = [] } = {}) {
  let cut = false;
  return async (input, init = {}) => {
    const url = new URL(String(input));
    if (cut && to) {
      const target = new URL(to);
      url.host = target.host;
    }
    const headers = new Headers(init.headers);
    log.push({ method: init.method ?? "GET", path: url.pathname, lastEventId: headers.get("Last-Event-ID") });
    const response = await fetch(url, init);
    const streaming = (response.headers.get("Content-Type") ?? "").startsWith("text/event-stream");
    if (cut || !streaming) return response;
    cut = true;
    const source = response.body.getReader();
    const decoder = new TextDecoder();
    let seen = 0;
    const body = new ReadableStream({
      async pull(controller) {
        const { value, done } = await source.read();
        if (done) return controller.close();
        seen += (decoder.decode(value, { stream: true }).match(/event: chat_token/g) ?? []).length;
        controller.enqueue(value);
        if (seen >= tokens) {
          await source.cancel();
          controller.error(new TypeError("network error: connection reset"));
        }
      },
      cancel: () => source.cancel(),
    });
    return new Response(body, { status: response.status, headers: response.headers });
  };
}

test("SseParser handles CRLF, comments, multi-line data and split chunks", () => {
  const parser = new SseParser();
  const events = [
    ...parser.feed(": ping\r\nid: 1\r\nevent: chat_token\r"),
    ...parser.feed("\ndata: {\"a\":\ndata: 1}\r\n\r\nda"),
    ...parser.feed("ta: x\n\n"),
  ];
  assert.deepEqual(events, [
    { event: "chat_token", data: '{"a":\n1}', id: "1" },
    { event: "message", data: "x", id: "1" },
  ]);
});

test("http: send streams a reply", async () => {
  const client = open(URL_A);
  const handle = client.send("over plain http");
  const seen = record(handle);
  let iterated = "";
  for await (const text of handle) iterated += text;
  const end = await checkReply(client, handle, seen);
  assert.equal(iterated, end.full_response);
});

test("http: stop", async () => {
  const client = open(URL_A);
  const handle = client.send("stop me over http");
  const seen = record(handle);
  await firstToken(handle);
  assert.equal(await handle.stop(), true);
  await checkReply(client, handle, seen, { stopped: true });
});

for (const [name, to] of [["the same worker", undefined], ["the other worker", URL_B]]) {
  test(`http: a dropped response resumes with Last-Event-ID on ${name}, no gap, no duplicate`, async () => {
    const log = [];
    const client = open(URL_A, { fetch: cuttingFetch({ tokens: 3, to, log }) });
    const handle = client.send(`cut me ${name}`);
    const seen = record(handle);
    await checkReply(client, handle, seen);
    const resumes = log.filter((r) => r.method === "GET" && r.path.startsWith("/api/chat/stream/"));
    assert.ok(resumes.length >= 1, JSON.stringify(log));
    assert.ok(Number(resumes[0].lastEventId) >= 3, JSON.stringify(resumes));
  });
}

test("http: join follows the reply in flight, and resume after a reload", async () => {
  const first = open(URL_A);
  const handle = first.send("follow me over http");
  await firstToken(handle);
  const second = open(URL_B);
  const joined = await second.join(handle.sessionId);
  assert.ok(joined.active);
  const third = open(URL_B);
  const resumed = third.resume(handle.streamId, 1);
  const end = await handle.done;
  assert.equal((await joined.active.done).full_response, end.full_response);
  assert.equal(joined.active.text, end.full_response);
  await resumed.done;
  assert.equal(resumed.text, end.full_response.slice(end.full_response.length - resumed.text.length));
});

test("http: errors carry the protocol's code and status", async () => {
  const client = open(URL_A);
  const bad = client.send("x", { provider: "no-such-provider" });
  await assert.rejects(bad.done, (e) => e instanceof ChatsockError && e.code === "invalid_request" && e.status === 400);
  await assert.rejects(client.resume("st_missing", 0).done, (e) => e.code === "not_found" && e.status === 404);
  await assert.rejects(client.stop("st_missing"), (e) => e.code === "not_found");
});

test("http: many concurrent streams, half of them cut, each reply whole and once", async () => {
  const made = Array.from({ length: 10 }, (_, i) => {
    const options = i % 2 ? { fetch: cuttingFetch({ tokens: 2 + i, to: URL_B }) } : {};
    const client = open(URL_A, options);
    const handle = client.send(`concurrent ${i}`);
    return { client, handle, seen: record(handle) };
  });
  for (const { client, handle, seen } of made) await checkReply(client, handle, seen);
});

test("http: a POST whose response is lost is sent again and replays the same stream", async () => {
  let posts = 0;
  const losing = async (input, init = {}) => {
    const response = await fetch(input, init);
    if ((init.method ?? "GET") === "POST" && String(input).endsWith("/api/chat/stream") && ++posts === 1) {
      await response.body.cancel(); // the server started it; the client never hears back
      throw new TypeError("network error: response lost");
    }
    return response;
  };
  const client = open(URL_A, { fetch: losing });
  const handle = client.send("lose my first response");
  const seen = record(handle);
  const end = await checkReply(client, handle, seen);
  assert.equal(posts, 2);
  const detail = await client.history(end.session_id);
  assert.deepEqual(detail.messages.map((m) => m.role), ["user", "assistant"], "one stream, stored once");
});
