// regenerate() in chatsock-client (both transports), against real workers
// (tests/test_js_client.py). The demo provider's reply is deterministic, so the
// regenerated reply is made different with max_tokens.
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";

import { ChatStore, connect } from "chatsock-client";

import { URL_A, URL_B, checkReply, record, until } from "./support.mjs";

const SHORT = { maxTokens: 6 };
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
describe("regenerate", { concurrency: true }, () => {
  /** A finished exchange to regenerate: its first reply's chat_complete. */
  async function exchange(client, text) {
    return client.send(text, { maxTokens: 10 }).done;
  }

  /** The session holds one user message and one reply, `end`'s, with `versions` earlier ones. */
  async function checkReplaced(client, end, versions) {
    const detail = await client.history(end.session_id);
    assert.deepEqual(detail.messages.map((m) => m.role), ["user", "assistant"], "the turn is not duplicated");
    const reply = detail.messages[1];
    assert.equal(reply.message_id, end.message_id);
    assert.equal(reply.content, end.full_response);
    assert.deepEqual((reply.versions ?? []).map((v) => v.content), versions);
  }

  for (const transport of ["websocket", "http"]) {
    test(`${transport}: regenerate replaces the reply; a retry with the same client_message_id starts nothing`, async () => {
      const client = open(URL_A, { transport });
      const first = await exchange(client, `regenerate me over ${transport}`);
      const clientMessageId = `regen-${transport}-${Math.random()}`;
      const handle = client.regenerate(first.session_id, { ...SHORT, clientMessageId });
      const seen = record(handle);
      const end = await checkReply(client, handle, seen);
      assert.equal(handle.regenerates, first.message_id);
      assert.equal(end.regenerates, first.message_id);
      assert.equal(end.message_id, first.message_id, "the new reply takes the old one's id");
      assert.notEqual(end.full_response, first.full_response);
      await checkReplaced(client, end, [first.full_response]);

      // The same request again, from a client on the other worker: the first stream, replayed whole.
      const other = open(URL_B, { transport });
      const retried = other.regenerate(first.session_id, { ...SHORT, clientMessageId });
      const replayed = record(retried);
      const again = await checkReply(other, retried, replayed);
      assert.equal(retried.streamId, handle.streamId, "the same stream");
      assert.equal(again.full_response, end.full_response);
      await checkReplaced(client, end, [first.full_response]);
    });
  }

  test("the same regenerate twice at once on one client: one stream, both handles whole", async () => {
    const client = open(URL_A, { reasoning: true });
    const first = await exchange(client, "regenerate me twice at once");
    const options = { ...SHORT, thinkingBudget: 1024, clientMessageId: `twice-${Math.random()}` };
    const handles = [client.regenerate(first.session_id, options), client.regenerate(first.session_id, options)];
    const seen = handles.map(record);
    const ends = [];
    for (const [i, handle] of handles.entries()) ends.push(await checkReply(client, handle, seen[i]));
    assert.equal(handles[0].streamId, handles[1].streamId);
    assert.equal(ends[0].full_response, ends[1].full_response);
    assert.ok(handles[0].reasoning.length > 0 && handles[0].reasoning === handles[1].reasoning, "reasoning on both");
    await checkReplaced(client, ends[0], [first.full_response]);
  });

  test("regenerate refuses a message_id that is not the last reply, naming the field", async () => {
    const client = open(URL_A);
    const first = await exchange(client, "not that one");
    const second = await client.send("a second question", { sessionId: first.session_id, maxTokens: 4 }).done;
    const refused = client.regenerate(first.session_id, { messageId: first.message_id });
    await assert.rejects(refused.done, (e) => e.code === "invalid_request" && e.message.includes("message_id"));
    const detail = await client.history(first.session_id);
    assert.deepEqual(detail.messages.map((m) => m.content).slice(-1), [second.full_response], "nothing changed");
  });

  test("many regenerates at once, each cut by an engine close mid-reply, resume on the other worker", async () => {
    const made = await Promise.all(Array.from({ length: 6 }, async (_, i) => {
      const client = open(URL_A, { nextUrl: () => URL_B });
      const first = await exchange(client, `regenerate and survive a drop ${i}`);
      const handle = client.regenerate(first.session_id, { maxTokens: 14 });
      const seen = record(handle);
      let cut = false;
      handle.on("token", (_, event) => {
        if (event.seq === 2 && !cut) {
          cut = true;
          client.socket.io.engine.close();
        }
      });
      return { client, first, handle, seen, cut: () => cut };
    }));
    for (const { client, first, handle, seen, cut } of made) {
      const end = await checkReply(client, handle, seen);
      assert.ok(cut(), "cut mid-reply");
      assert.equal(client.socket.io.engine.port, new URL(URL_B).port);
      await checkReplaced(client, end, [first.full_response]);
    }
  });

  test("a ChatStore following the session shows another tab's regenerate in place, with the old version", async () => {
    const client = open(URL_A, { reasoning: true });
    const first = await exchange(client, "regenerate me while another tab watches");
    const store = new ChatStore({ client: open(URL_B), sessionId: first.session_id });
    await until(() => store.getState().messages.length === 2, 20000, "the session opened");
    const end = await client.regenerate(first.session_id, { ...SHORT, thinkingBudget: 1024 }).done;
    await until(() => store.getState().messages[1]?.status === "complete", 20000, "the new reply");
    const { messages } = store.getState();
    assert.deepEqual(messages.map((m) => m.role), ["user", "assistant"], "the turn is not duplicated");
    assert.equal(messages[1].id, first.message_id);
    assert.equal(messages[1].content, end.full_response);
    assert.deepEqual(messages[1].versions.map((v) => v.content), [first.full_response]);
    store.setClient(null);
  });
});
