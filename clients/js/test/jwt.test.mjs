// The token in jwt mode, over both transports, against a real worker with
// auth.mode = "jwt". Run by tests/test_js_client.py with CHATSOCK_JWT_URL and tokens.
import assert from "node:assert/strict";
import { after, test } from "node:test";

import { connect } from "chatsock-client";

const URL = process.env.CHATSOCK_JWT_URL;
const ALICE = process.env.CHATSOCK_TOKEN_ALICE;
const BOB = process.env.CHATSOCK_TOKEN_BOB;
const skip = !URL;
const clients = [];
const open = (options) => {
  const client = connect(URL, options);
  clients.push(client);
  return client;
};
after(() => {
  for (const client of clients) client.close();
});

for (const transport of ["websocket", "http"]) {
  test(`${transport}: a token function authenticates the stream and the HTTP API`, { skip }, async () => {
    let asked = 0;
    const alice = open({ transport, token: async () => { asked += 1; return ALICE; } });
    const end = await alice.send(`alice over ${transport}`).done;
    assert.ok(asked >= 1);
    const sessions = await alice.sessions();
    assert.ok(sessions.some((s) => s.session_id === end.session_id));
    assert.equal((await alice.history(end.session_id)).messages.length, 2);
    const bob = open({ transport, token: BOB });
    await assert.rejects(bob.history(end.session_id), (e) => e.code === "not_found");
    await assert.rejects(bob.resume(end.stream_id, 0).done, (e) => e.code === "not_found");
  });

  test(`${transport}: without a token the reply fails with unauthorized`, { skip }, async () => {
    const nobody = open({ transport });
    await assert.rejects(nobody.send("let me in").done, (e) => e.code === "unauthorized");
    await assert.rejects(nobody.sessions(), (e) => e.code === "unauthorized" && e.status === 401);
  });
}

/** An HS256 JWT for `sub`, valid for `seconds` (the worker's secret is given to the test). */
async function mint(sub, seconds) {
  const { createHmac } = await import("node:crypto");
  const part = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub, iat: now, exp: now + seconds })}`;
  const signature = createHmac("sha256", process.env.CHATSOCK_JWT_SECRET).update(body).digest("base64url");
  return `${body}.${signature}`;
}

test("auth_expired mid-reply: the token function is asked again, the socket reconnects and resumes", { skip }, async () => {
  let asked = 0;
  const client = open({
    token: () => {
      asked += 1;
      return mint("carol", asked === 1 ? 2 : 600); // the first one expires mid-reply
    },
    socketOptions: { reconnectionDelay: 50, reconnectionDelayMax: 200 },
  });
  const expired = [];
  const handle = client.send("outlive my token");
  client.on("auth_expired", (event) => expired.push({ ...event, at: handle.lastSeq }));
  const seqs = [];
  handle.on("token", (_, event) => seqs.push(event.seq));
  const end = await handle.done;
  assert.deepEqual(expired.map((e) => e.code), ["unauthorized"]);
  assert.ok(asked >= 2, `asked ${asked} times`);
  assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => i + 1));
  assert.equal(handle.text, end.full_response);
  assert.ok(expired[0].at < seqs.length, "the token expired before the reply ended");
});
