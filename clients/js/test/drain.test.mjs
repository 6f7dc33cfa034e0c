// A rolling deploy behind nginx: the worker holding the sockets is sent SIGTERM
// mid-stream, says `server_draining`, and chatsock-client reconnects (nginx
// sends it to the other worker) and resumes every stream by itself.
// Run by tests/test_js_client.py with CHATSOCK_NGINX_URL and CHATSOCK_WORKERS.
import assert from "node:assert/strict";
import { after, test } from "node:test";

import { connect } from "chatsock-client";

import { checkReply, firstToken, record, until } from "./support.mjs";

const NGINX = process.env.CHATSOCK_NGINX_URL;
const WORKERS = JSON.parse(process.env.CHATSOCK_WORKERS ?? "[]");
const clients = [];
after(() => {
  for (const client of clients) client.close();
});

async function activeStreams(url) {
  const text = await (await fetch(`${url}/metrics`)).text();
  return Number(/^chatsock_active_streams (\S+)$/m.exec(text)?.[1] ?? 0);
}

test("server_draining: every stream resumes on the other worker, whole and once", { skip: !NGINX }, async () => {
  const made = Array.from({ length: 6 }, (_, i) => {
    const client = connect(NGINX, { socketOptions: { reconnectionDelay: 100, reconnectionDelayMax: 500 } });
    clients.push(client);
    const drained = [];
    client.on("draining", (event) => drained.push(event));
    const handle = client.send(`drain me ${i}`);
    return { client, handle, seen: record(handle), drained };
  });
  await Promise.all(made.map(({ handle }) => firstToken(handle)));
  // ip_hash: one client address, one worker runs every stream.
  const counts = await Promise.all(WORKERS.map((w) => activeStreams(w.url)));
  const leaving = WORKERS[counts.findIndex((n) => n > 0)];
  assert.ok(leaving, `a worker runs the streams: ${counts}`);
  process.kill(leaving.pid, "SIGTERM");
  for (const { client, handle, seen, drained } of made) {
    await checkReply(client, handle, seen);
    assert.equal(drained.length, 1, "server_draining once");
    assert.equal(drained[0].code, "server_draining");
  }
  await until(async () => {
    try {
      await fetch(`${leaving.url}/healthz`);
      return false;
    } catch {
      return true; // the drained worker has exited
    }
  }, 60000, "the drained worker to exit");
});
