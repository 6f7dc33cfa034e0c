// A page on one origin uses the HTTP API on another, in Debian's headless
// Chromium, so the browser itself enforces CORS (preflights included).
// Usage: node tests/js/cors.mjs <page-url> <api-url> <chromium-path>
// Prints one JSON object with what each call got, or the error it raised.
import { launch } from "./browser.mjs";

const [pageUrl, api, executablePath] = process.argv.slice(2);
const browser = await launch(executablePath);
let result = {};
try {
  const page = await browser.newPage();
  await page.goto(pageUrl);
  result = await page.evaluate(async (api) => {
    const out = { origin: location.origin };
    const attempt = async (name, call) => {
      try { out[name] = await call(); } catch (err) { out[name] = { error: String(err) }; }
    };
    const post = (body, accept) => fetch(`${api}/api/chat/stream`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: accept },
      body: JSON.stringify(body),
    });
    // A JSON reply (preflighted: Content-Type application/json).
    await attempt("json", async () => (await post({ message: "one", session_id: "cors" },
      "application/json")).json());
    // An SSE reply read with fetch streaming.
    await attempt("sse", async () => {
      const response = await post({ message: "two", session_id: "cors" }, "text/event-stream");
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let text = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += decoder.decode(value, { stream: true });
      }
      return { streamId: response.headers.get("X-Stream-Id"), text };
    });
    // Following that stream again with EventSource (a simple request, no preflight).
    await attempt("follow", () => new Promise((resolve, reject) => {
      const id = out.sse && out.sse.streamId;
      if (!id) { reject(new Error("no X-Stream-Id was readable")); return; }
      const source = new EventSource(`${api}/api/chat/stream/${id}`);
      const tokens = [];
      source.addEventListener("chat_token", (e) => tokens.push(JSON.parse(e.data).token));
      source.addEventListener("chat_complete", (e) => {
        source.close();
        resolve({ tokens: tokens.join(""), full: JSON.parse(e.data).full_response });
      });
      source.onerror = () => { source.close(); reject(new Error("EventSource failed")); };
    }));
    // Deleting the session (preflighted: DELETE).
    await attempt("delete", async () => {
      const response = await fetch(`${api}/api/chat/sessions/cors`, { method: "DELETE" });
      return { status: response.status };
    });
    return out;
  }, api);
} catch (err) {
  result.failure = String(err);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
