// chatsock-client in headless Chromium, loaded by a page on another origin (a
// dev server on another port): ESM from dist/ through an import map, CORS from
// server.cors_allowed_origins. Both transports, and a forced engine close.
// Run by tests/test_js_client.py with CHATSOCK_PAGE_PORT and CHATSOCK_CHROMIUM.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { after, before, test } from "node:test";

import { URL_A } from "./support.mjs";

const PORT = Number(process.env.CHATSOCK_PAGE_PORT);
const CHROMIUM = process.env.CHATSOCK_CHROMIUM;
const skip = !PORT || !CHROMIUM;

const FILES = {
  "/vendor/socket.io-client.js": new URL("../node_modules/socket.io-client/dist/socket.io.esm.min.js", import.meta.url),
};
const PAGE = `<!doctype html><meta charset="utf-8"><title>chatsock-client</title>
<script type="importmap">{"imports": {"socket.io-client": "/vendor/socket.io-client.js",
  "chatsock-client": "/dist/index.js"}}</script>
<script type="module">
  import { connect } from "chatsock-client";
  window.chatsock = { connect };
  window.ready = true;
</script>`;

let server;
let browser;
before(async () => {
  if (skip) return;
  server = createServer(async (request, response) => {
    const path = new URL(request.url, "http://x").pathname;
    try {
      if (path === "/") return response.writeHead(200, { "Content-Type": "text/html" }).end(PAGE);
      const file = FILES[path] ?? (path.startsWith("/dist/") && !path.includes("..") ? new URL(`..${path}`, import.meta.url) : null);
      if (file === null) throw new Error("not found");
      response.writeHead(200, { "Content-Type": "text/javascript" }).end(await readFile(file));
    } catch {
      response.writeHead(404).end();
    }
  });
  await new Promise((resolve) => server.listen(PORT, "127.0.0.1", resolve));
  const { chromium } = await import("playwright-core");
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
  });
});
after(async () => {
  await browser?.close();
  server?.close();
});

async function page() {
  const tab = await browser.newPage();
  const errors = [];
  tab.on("pageerror", (error) => errors.push(String(error)));
  await tab.goto(`http://127.0.0.1:${PORT}/`);
  await tab.waitForFunction(() => window.ready === true);
  return { tab, errors };
}

for (const transport of ["websocket", "polling", "http"]) {
  test(`in Chromium, cross-origin, ${transport}: a reply streams and survives a dropped connection`, { skip }, async () => {
    const { tab, errors } = await page();
    const result = await tab.evaluate(async ({ url, transport }) => {
      const client = window.chatsock.connect(url, { transport, socketOptions: { reconnectionDelay: 50 } });
      const handle = client.send(`hello from Chromium over ${transport}`);
      const seqs = [];
      handle.on("token", (_, event) => {
        seqs.push(event.seq);
        // Once, mid-reply: the socket's transport closes under it.
        if (seqs.length === 3 && client.socket) client.socket.io.engine.close();
      });
      const end = await handle.done;
      const detail = await client.history(end.session_id);
      client.close();
      return { seqs, text: handle.text, full: end.full_response, stored: detail.messages.map((m) => m.content) };
    }, { url: URL_A, transport });
    assert.deepEqual(errors, []);
    assert.deepEqual(result.seqs, Array.from({ length: result.seqs.length }, (_, i) => i + 1));
    assert.equal(result.text, result.full);
    assert.deepEqual(result.stored, [`hello from Chromium over ${transport}`, result.full]);
    await tab.close();
  });
}
