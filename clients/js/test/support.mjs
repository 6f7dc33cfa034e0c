// Shared by the node:test files: the servers tests/test_js_client.py started.
import assert from "node:assert/strict";

/** Worker A, worker B (same Redis), set by tests/test_js_client.py. */
export const URL_A = process.env.CHATSOCK_URL;
export const URL_B = process.env.CHATSOCK_URL_B ?? URL_A;

if (!URL_A) {
  throw new Error("CHATSOCK_URL is not set: run these through tests/test_js_client.py (make test)");
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits until `check()` is truthy, polling; fails after `ms`. */
export async function until(check, ms = 20000, what = "condition") {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** Records every token event a handle delivers, to check order and uniqueness. */
export function record(handle) {
  const seqs = [];
  const pieces = [];
  handle.on("token", (text, event) => {
    seqs.push(event.seq);
    pieces.push(text);
  });
  return { seqs, pieces };
}

/** The invariants of one followed reply: seqs 1..N once each, text = full_response, stored once. */
export async function checkReply(client, handle, seen, { stopped = false } = {}) {
  const end = await handle.done;
  assert.equal(end.stopped, stopped, "stopped");
  assert.deepEqual(seen.seqs, Array.from({ length: seen.seqs.length }, (_, i) => i + 1), "seqs 1..N, no gap, no duplicate");
  assert.equal(seen.pieces.join(""), end.full_response, "tokens add up to full_response");
  assert.equal(handle.text, end.full_response);
  const detail = await client.history(end.session_id);
  const stored = detail.messages.filter((m) => m.message_id === end.message_id);
  assert.equal(stored.length, 1, "stored exactly once");
  assert.equal(stored[0].content, end.full_response);
  assert.equal(stored[0].status, stopped ? "stopped" : "complete");
  return end;
}

export const firstToken = (handle) => until(() => handle.lastSeq > 0, 20000, "a first token");
