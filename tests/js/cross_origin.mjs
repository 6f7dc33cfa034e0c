// Socket.IO in Debian's headless Chromium, so the browser itself enforces
// the page's CSP and CORS on the polling transport.
// Usage:
//   node tests/js/cross_origin.mjs page <page-url> <chromium-path>
//     the bundled page: connects, streams one reply, reports CSP violations
//   node tests/js/cross_origin.mjs app <app-url> <chatsock-url> <transports> <credentials> <chromium-path>
//     a page on <app-url> loads socket.io-client from chatsock and connects to it
// Prints one JSON object with what happened.
import { launch } from "./browser.mjs";

const [mode, ...rest] = process.argv.slice(2);
const executablePath = rest.pop();
const browser = await launch(executablePath);
const result = {};
try {
  const page = await browser.newPage();
  const consoleErrors = [];
  const failedResponses = [];
  // A failed load is reported by URL below; its console line does not name it.
  page.on("console", (msg) => {
    if (msg.type() === "error" && !msg.text().startsWith("Failed to load resource")) {
      consoleErrors.push(msg.text());
    }
  });
  page.on("response", (r) => { if (r.status() >= 400) failedResponses.push(new URL(r.url()).pathname); });
  page.on("pageerror", (err) => consoleErrors.push(String(err)));
  await page.addInitScript(() => {
    window.__violations = [];
    document.addEventListener("securitypolicyviolation",
      (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  if (mode === "page") {
    const [url] = rest;
    await page.goto(url);
    await page.waitForFunction(
      () => document.getElementById("status").textContent === "connected", null, { timeout: 20000 });
    await page.fill("#input", "under a strict policy");
    await page.click("#send");
    await page.waitForFunction(() => {
      const bubbles = document.querySelectorAll(".bubble.assistant");
      return bubbles.length === 1 && bubbles[0].classList.contains("complete") &&
        bubbles[0].querySelector(".code");
    }, null, { timeout: 20000 });
    // The reply's text as the page's store holds it (the bubble shows it rendered).
    result.reply = await page.evaluate(() => window.chatsockPage.store.getState().messages[1].content);
    result.violations = await page.evaluate(() => window.__violations.slice());
    result.consoleErrors = consoleErrors.slice();
    // The policy is enforced: an injected inline script does not run.
    result.inlineRan = await page.evaluate(async () => {
      const script = document.createElement("script");
      script.textContent = "window.inlineRan = true;";
      document.body.appendChild(script);
      await new Promise((resolve) => setTimeout(resolve, 200));
      return Boolean(window.inlineRan);
    });
    result.violationsAfterInjection = await page.evaluate(() => window.__violations.slice());
  } else {
    result.consoleErrors = consoleErrors;
    const [appUrl, chatsock, transports, credentials] = rest;
    await page.goto(appUrl);
    Object.assign(result, await page.evaluate(async ({ chatsock, transports, credentials }) => {
      const out = { origin: location.origin };
      await new Promise((resolve, reject) => {
        const script = document.createElement("script");
        script.src = `${chatsock}/static/vendor/socket.io.min.js`;
        script.onload = resolve;
        script.onerror = () => reject(new Error("socket.io.min.js did not load"));
        document.head.appendChild(script);
      });
      const socket = io(chatsock, {
        transports: transports.split(","),
        withCredentials: credentials === "true",
        reconnection: false,
        timeout: 10000,
      });
      try {
        await new Promise((resolve, reject) => {
          socket.on("connect", resolve);
          socket.on("connect_error", (err) => reject(err));
        });
        out.connected = true;
        out.reply = await new Promise((resolve, reject) => {
          socket.on("chat_complete", (e) => resolve(e.full_response));
          socket.on("chat_stream_error", (e) => reject(new Error(`${e.code}: ${e.error}`)));
          socket.emit("chat_stream", { message: "from another origin" }, (ack) => {
            if (!ack.ok) reject(new Error(ack.error.message));
          });
        });
      } catch (err) {
        out.connected = out.connected || false;
        out.error = String(err && err.message ? err.message : err);
      } finally {
        socket.close();
      }
      return out;
    }, { chatsock, transports, credentials }));
  }
  result.failedResponses = failedResponses;
} catch (err) {
  result.failure = String(err);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
