// chatsock-client over Socket.IO, against real workers (tests/test_js_client.py).
import assert from "node:assert/strict";
import { after, test } from "node:test";

import { ChatsockError, connect } from "chatsock-client";

import { URL_A, URL_B, checkReply, firstToken, record, until } from "./support.mjs";

const clients = [];
const open = (url, options = {}) => {
  const client = connect(url, { socketOptions: { reconnectionDelay: 50, reconnectionDelayMax: 200 }, ...options });
  clients.push(client);
  return client;
};
after(() => {
  for (const client of clients) client.close();
});

test("send streams a reply: events, async iterator and promise agree", async () => {
  const client = open(URL_A);
  const handle = client.send("hello from chatsock-client");
  const seen = record(handle);
  let iterated = "";
  for await (const text of handle) iterated += text;
  const end = await checkReply(client, handle, seen);
  assert.equal(iterated, end.full_response);
  assert.match(end.full_response, /You said: "hello from chatsock-client"/);
  assert.equal(handle.status, "complete");
  assert.ok(handle.streamId && handle.sessionId && handle.messageId);
});

test("stop ends the reply as stopped with the text sent so far", async () => {
  const client = open(URL_A);
  const handle = client.send("stop me");
  const seen = record(handle);
  await firstToken(handle);
  assert.equal(await handle.stop(), true);
  await checkReply(client, handle, seen, { stopped: true });
  assert.equal(handle.status, "stopped");
  assert.equal(await handle.stop(), false);
});

test("a second tab joins the session and follows the reply from its first token", async () => {
  const first = open(URL_A);
  const handle = first.send("follow me from another tab");
  await firstToken(handle);
  const second = open(URL_B);
  const joined = await second.join(handle.sessionId);
  assert.equal(joined.sessionId, handle.sessionId);
  assert.ok(joined.messages.some((m) => m.role === "user" && m.content === "follow me from another tab"));
  assert.ok(joined.active, "the reply in flight is active");
  const seen = record(joined.active);
  const early = joined.active.lastSeq; // delivered before record() was attached
  const mine = await handle.done;
  const theirs = await joined.active.done;
  assert.equal(theirs.full_response, mine.full_response);
  assert.equal(joined.active.text, mine.full_response, "the second tab has the whole reply, once");
  assert.deepEqual(seen.seqs, Array.from({ length: seen.seqs.length }, (_, i) => i + early + 1));
});

test("the second tab sees a reply started later in the joined session", async () => {
  const first = open(URL_A);
  const opening = first.send("open a session");
  await opening.done;
  const second = open(URL_B);
  await second.join(opening.sessionId);
  const adopted = new Promise((resolve) => second.on("stream", resolve));
  const handle = first.send("a later question", { sessionId: opening.sessionId });
  const followed = await adopted;
  const end = await handle.done;
  assert.equal((await followed.done).full_response, end.full_response);
  assert.equal(followed.text, end.full_response);
});

test("resume after a page reload: resume(streamId, after) sends the rest, once", async () => {
  const client = open(URL_A);
  const handle = client.send("reload me");
  await until(() => handle.lastSeq >= 3);
  const reloaded = open(URL_B);
  const resumed = reloaded.resume(handle.streamId, 2, { epoch: handle.epoch });
  const seen = record(resumed);
  const end = await resumed.done;
  assert.equal(seen.seqs[0], 3);
  assert.deepEqual(seen.seqs, Array.from({ length: seen.seqs.length }, (_, i) => i + 3));
  const firstTwo = (await handle.done).full_response;
  assert.ok(firstTwo.endsWith(seen.pieces.join("")));
  assert.equal(end.full_response, firstTwo);
});

async function engineCloseMidStream(urlAfter, count) {
  const made = Array.from({ length: count }, () => {
    const client = open(URL_A, { nextUrl: () => urlAfter });
    const reconnects = [];
    client.on("connection", (status) => reconnects.push(status));
    const handle = client.send(`survive a dropped connection ${Math.random()}`);
    return { client, handle, seen: record(handle), reconnects };
  });
  await Promise.all(made.map(({ handle }) => firstToken(handle)));
  // A network blip: the transport closes under socket.io-client, which reconnects by itself.
  for (const { client } of made) client.socket.io.engine.close();
  for (const { client, handle, seen, reconnects } of made) {
    await checkReply(client, handle, seen);
    assert.ok(reconnects.includes("reconnecting"), `reconnected: ${reconnects}`);
    assert.equal(client.socket.io.engine.port, new URL(urlAfter).port, "reconnected where nextUrl said");
  }
}

test("a forced engine close mid-stream resumes with no gap and no duplicate (one worker)", async () => {
  await engineCloseMidStream(URL_A, 8);
});

test("a forced engine close mid-stream resumes on the other worker with no gap and no duplicate", async () => {
  assert.notEqual(URL_A, URL_B, "two workers");
  await engineCloseMidStream(URL_B, 8);
});

test("sessions() and history() read the HTTP API", async () => {
  const client = open(URL_A);
  const handle = client.send("list me");
  const end = await handle.done;
  const sessions = await client.sessions({ limit: 1000 });
  const row = sessions.find((s) => s.session_id === end.session_id);
  assert.ok(row, "the session is listed");
  assert.equal(row.title, "list me");
  const detail = await client.history(end.session_id);
  assert.deepEqual(detail.messages.map((m) => m.role), ["user", "assistant"]);
  assert.equal(detail.active_stream, null);
});

test("errors are ChatsockError with the protocol's code", async () => {
  const client = open(URL_A);
  const bad = client.send("x", { provider: "no-such-provider" });
  await assert.rejects(bad.done, (error) => error instanceof ChatsockError && error.code === "invalid_request");
  assert.equal(bad.status, "error");
  const missing = client.resume("st_missing", 0);
  await assert.rejects(missing.done, (error) => error.code === "not_found");
  await assert.rejects(client.join("ses_missing_here"), (error) => error.code === "not_found");
  await assert.rejects(client.history("ses_missing_here"), (error) => error.code === "not_found" && error.status === 404);
  await assert.rejects(client.stop("st_missing"), (error) => error.code === "not_found");
});

test("a connection lost before the ack: send() is retried with the same client_message_id, one reply", async () => {
  const made = Array.from({ length: 8 }, (_, i) => {
    const client = open(URL_A, { nextUrl: () => (i % 2 ? URL_B : URL_A), ackTimeoutMs: 5000 });
    return { client, i };
  });
  await Promise.all(made.map(({ client }) => until(() => client.socket.connected)));
  let emits = 0;
  for (const { client } of made) {
    let first = true;
    client.socket.onAnyOutgoing((event) => {
      if (event !== "chat_stream") return;
      emits += 1;
      // Right after the request is written: its ack (maybe the request too) is lost.
      if (first) setImmediate(() => client.socket.io.engine.close());
      first = false;
    });
  }
  const sent = made.map(({ client, i }) => {
    const handle = client.send(`lost ack ${i}`);
    return { client, handle, seen: record(handle) };
  });
  for (const { client, handle, seen } of sent) {
    const end = await checkReply(client, handle, seen);
    const detail = await client.history(end.session_id);
    assert.deepEqual(detail.messages.map((m) => m.role), ["user", "assistant"], "started once");
  }
  assert.ok(emits > sent.length, `chat_stream was sent again after the lost acks (${emits} emits)`);
});

async function deleteMidReply(followerUrl) {
  const client = open(URL_A);
  const handle = client.send("delete me mid-reply");
  await firstToken(handle);
  const follower = open(followerUrl);
  const joined = await follower.join(handle.sessionId);
  const deleted = new Promise((resolve) => follower.on("session_deleted", resolve));
  await open(URL_B, { transport: "http" }).deleteSession(handle.sessionId);
  assert.deepEqual(await deleted, { session_id: handle.sessionId });
  const end = await handle.done;
  assert.equal(end.stopped, true);
  await assert.rejects(client.history(handle.sessionId), (e) => e.code === "not_found");
  return { end, followed: await joined.active.done.catch((error) => error) };
}

test("deleteSession stops the reply in flight and tells the session's followers", async () => {
  const { end, followed } = await deleteMidReply(URL_A);
  assert.equal(followed.full_response, end.full_response);
  assert.equal(followed.stopped, true);
});

test("deleteSession: a follower on the other worker never waits for ever", async () => {
  // The server should send it the stopped chat_complete before session_deleted
  // (docs/protocol.md); until it does, the client's resume ends it with not_found.
  const { end, followed } = await deleteMidReply(URL_B);
  if (followed instanceof Error) assert.equal(followed.code, "not_found");
  else assert.equal(followed.full_response, end.full_response);
});

test("a reply started elsewhere while this tab was disconnected is found on rejoin, from seq 1", async () => {
  const first = open(URL_A);
  const opening = first.send("open a session for a rejoin");
  await opening.done;
  const second = open(URL_B);
  await second.join(opening.sessionId);
  const adopted = new Promise((resolve) => second.on("stream", resolve));
  second.socket.io.reconnectionDelay(500);
  second.socket.io.reconnectionDelayMax(500);
  second.socket.io.engine.close();
  const handle = first.send("started while the other tab was away", { sessionId: opening.sessionId });
  await firstToken(handle);
  const followed = await adopted;
  const end = await handle.done;
  assert.equal((await followed.done).full_response, end.full_response);
  assert.equal(followed.text, end.full_response);
});
