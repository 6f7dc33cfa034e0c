// Drives the chatsock page in Debian's headless Chromium (playwright-core, no
// browser download). Usage:
//   node tests/js/page.mjs <scenario> <url> <json-options> <chromium-path>
// Prints one JSON object with what the page showed. Scenarios: basics, model,
// follow, many, jwt, screens, reasoning (see tests/test_page*.py for what each pins).
import { launch } from "./browser.mjs";

const [scenario, url, rawOptions, executablePath] = process.argv.slice(2);
const options = JSON.parse(rawOptions || "{}");
// Generous: a loaded CI box runs a dozen tabs on two cores.
const WAIT = { timeout: scenario === "many" ? 45000 : 20000 };
const browser = await launch(executablePath);
const result = { errors: [] };

/** A new tab that records page errors, CSP violations and whether typing dots showed. */
async function open(context, address) {
  const page = await context.newPage();
  page.on("pageerror", (err) => result.errors.push(String(err)));
  page.on("console", (msg) => {
    if (msg.type() === "error" && !msg.text().startsWith("Failed to load resource")) {
      result.errors.push(msg.text());
    }
  });
  await page.addInitScript(() => {
    window.__violations = [];
    window.__dots = 0;
    document.addEventListener("securitypolicyviolation",
      (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));
    new MutationObserver(() => {
      if (document.querySelector(".bubble .dots")) window.__dots += 1;
    }).observe(document, { subtree: true, childList: true });
  });
  await page.goto(address);
  return page;
}

const connected = (page) => page.waitForFunction(
  () => document.getElementById("status").textContent === "connected", null, WAIT);

/** The text of every message as the page's store holds it: [{role, content, status}]. */
const messages = (page) => page.evaluate(() => window.chatsockPage.store.getState().messages
  .map((m) => ({ role: m.role, content: m.content, status: m.status, id: m.id })));

const replies = (page) => page.evaluate(() => document.querySelectorAll(".bubble.assistant").length);

/** Waits for the n-th (1-based) reply to end (complete, stopped or error). */
const ended = (page, n) => page.waitForFunction((n) => {
  const bubble = document.querySelectorAll(".bubble.assistant")[n - 1];
  return bubble && ["complete", "stopped", "error"].some((s) => bubble.classList.contains(s));
}, n, WAIT);

/** Waits until the n-th reply shows at least `chars` characters while still streaming. */
const streaming = (page, n, chars = 1) => page.waitForFunction(([n, chars]) => {
  const bubble = document.querySelectorAll(".bubble.assistant")[n - 1];
  // The reply's text only: the bubble also holds the (hidden) caveat's "Retry".
  return bubble && bubble.classList.contains("streaming") && bubble.querySelector(".markdown").textContent.length >= chars;
}, [n, chars], WAIT);

async function type(page, text) {
  await page.fill("#input", text);
  await page.press("#input", "Enter");
}

const sessionOf = (page) => page.evaluate(() => /^#\/s\/(.+)$/.exec(location.hash)?.[1] ?? null);

const injected = (page) => page.evaluate(() => ({
  pwned: window.pwned ?? null,
  scripts: document.querySelectorAll("#messages script").length,
  handlers: [...document.querySelectorAll("#messages *")]
    .flatMap((el) => [...el.attributes].map((a) => a.name)).filter((n) => n.startsWith("on")),
  jsLinks: [...document.querySelectorAll("#messages a")].filter((a) => /^\s*javascript:/i.test(a.getAttribute("href") ?? "")).length,
  links: [...document.querySelectorAll("#messages a")].map((a) => a.getAttribute("href")),
  frames: document.querySelectorAll("#messages iframe, #messages object, #messages embed").length,
  styles: document.querySelectorAll("#messages [style]").length,
}));

async function basics() {
  const context = await browser.newContext();
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: new URL(url).origin });
  const page = await open(context, url);
  await connected(page);
  // Shift+Enter is a new line, not a send.
  await page.fill("#input", "line one");
  await page.press("#input", "Shift+Enter");
  await page.keyboard.type("line two");
  result.shiftEnter = { value: await page.inputValue("#input"), replies: await replies(page) };
  // Enter sends; markdown renders while the reply streams.
  const hostile = options.hostile;
  await page.fill("#input", hostile);
  await page.press("#input", "Enter");
  result.inputAfterSend = await page.inputValue("#input");
  await page.waitForFunction(() => {
    const bubble = document.querySelector(".bubble.assistant");
    return bubble && bubble.classList.contains("streaming") && bubble.querySelector(".markdown strong");
  }, null, WAIT);
  result.duringStream = await page.evaluate(() => {
    const bubble = document.querySelector(".bubble.assistant");
    return { strong: bubble.querySelector("strong").textContent, stopVisible: !document.getElementById("stop").hidden,
      hasPre: Boolean(bubble.querySelector("pre")), raw: bubble.textContent.includes("**") };
  });
  await ended(page, 1);
  result.dotsSeen = await page.evaluate(() => window.__dots > 0);
  result.afterStream = await page.evaluate(() => {
    const bubble = document.querySelector(".bubble.assistant");
    const code = bubble.querySelector(".code pre code");
    return {
      strong: bubble.querySelector("strong")?.textContent ?? null,
      code: code?.textContent ?? null,
      highlighted: code ? code.querySelectorAll("[class^='hljs-']").length : 0,
      inlineCode: [...bubble.querySelectorAll(":not(pre) > code")].map((c) => c.textContent),
      rawFence: bubble.textContent.includes("```"),
      meta: document.querySelector(".msg.assistant .meta").textContent,
      sendVisible: !document.getElementById("send").hidden,
      userText: document.querySelector(".bubble.user").textContent,
    };
  });
  await page.click(".code .copy");
  result.copyLabel = await page.textContent(".code .copy");
  result.clipboard = await page.evaluate(() => navigator.clipboard.readText());
  result.hash = await page.evaluate(() => location.hash);
  result.injected = await injected(page);

  // Stop, then Esc.
  await type(page, "stop this one");
  await streaming(page, 2, 20);
  await page.click("#stop");
  await ended(page, 2);
  await type(page, "escape this one");
  await streaming(page, 3, 20);
  await page.keyboard.press("Escape");
  await ended(page, 3);
  result.stopStatuses = await page.evaluate(() => [...document.querySelectorAll(".bubble.assistant")]
    .map((b) => ["complete", "stopped", "error"].find((s) => b.classList.contains(s))));
  result.first = { session: await sessionOf(page), messages: await messages(page) };

  // The sidebar: a new chat, a switch back, a delete.
  await page.click("#new-chat");
  await page.waitForFunction(() => !document.querySelector(".msg"), null, WAIT);
  result.newChatHash = await page.evaluate(() => location.hash);
  await type(page, "a second chat");
  await ended(page, 1);
  result.second = { session: await sessionOf(page), messages: await messages(page) };
  await page.waitForFunction(() => document.querySelectorAll("#sessions li").length === 2, null, WAIT);
  result.listed = await page.evaluate(() => [...document.querySelectorAll("#sessions li")]
    .map((li) => ({ id: li.dataset.session, title: li.querySelector("a").textContent, current: li.classList.contains("current") })));
  await page.click(`#sessions li[data-session="${result.first.session}"] a`);
  await page.waitForFunction((n) => document.querySelectorAll(".bubble.assistant").length === n &&
    document.querySelector(".bubble.assistant .code"), result.first.messages.length / 2, WAIT);
  result.switched = { hash: await page.evaluate(() => location.hash), messages: await messages(page),
    rendered: await page.evaluate(() => Boolean(document.querySelector(".bubble.assistant .markdown strong"))) };
  await page.click(`#sessions li[data-session="${result.second.session}"] .delete`);
  await page.waitForFunction(() => document.querySelectorAll("#sessions li").length === 1, null, WAIT);
  result.afterDelete = {
    listed: await page.evaluate(() => [...document.querySelectorAll("#sessions li")].map((li) => li.dataset.session)),
    hash: await page.evaluate(() => location.hash),
  };
  // The URL of a deleted chat says it cannot be opened.
  await page.evaluate((id) => { location.hash = `#/s/${id}`; }, result.second.session);
  await page.waitForSelector("#notice:not([hidden])", WAIT);
  result.deletedNotice = await page.textContent("#notice");
  result.violations = await page.evaluate(() => window.__violations.slice());
}

async function screens() {
  // A tidy conversation in light, dark and on a phone; the phone's list hides.
  const desk = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme: "light" });
  const page = await open(desk, url);
  await connected(page);
  await type(page, "Another chat, for the list");
  await ended(page, 1);
  await page.click("#new-chat");
  await page.waitForFunction(() => !document.querySelector(".msg"), null, WAIT);
  await page.click("#think"); // this reply reasons: its Thinking section shows
  await type(page, "Show me a tiny **Python** function");
  await ended(page, 1);
  result.thinking = await page.evaluate(() => {
    const details = document.querySelector(".msg.assistant .thinking");
    return { hidden: details.hidden, summary: details.querySelector("summary").textContent };
  });
  await page.waitForFunction(() => document.querySelectorAll("#sessions li").length === 2, null, WAIT);
  const session = await sessionOf(page);
  await page.waitForTimeout(300);
  await page.screenshot({ path: `${options.screenshots}/page-light.png` });
  await page.click("#theme");
  await page.waitForFunction(() => document.documentElement.dataset.theme === "dark");
  result.darkBackground = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  await page.screenshot({ path: `${options.screenshots}/page-dark.png` });
  const phone = await browser.newContext({ viewport: { width: 390, height: 760 }, deviceScaleFactor: 2,
    isMobile: true, hasTouch: true, colorScheme: "light" });
  const small = await open(phone, `${url}#/s/${session}`);
  await connected(small);
  await small.waitForFunction(() => document.querySelector(".bubble.assistant .code"), null, WAIT);
  const shown = () => small.evaluate(() => document.getElementById("sidebar").getBoundingClientRect().right > 1);
  result.phone = { sidebarShown: await shown(),
    menuShown: await small.evaluate(() => getComputedStyle(document.getElementById("menu")).display !== "none") };
  await small.click("#menu");
  await small.waitForTimeout(300);
  result.phone.sidebarOpened = await shown();
  await small.mouse.click(380, 400); // beside the list: it closes
  await small.waitForTimeout(300);
  result.phone.sidebarClosed = !(await shown());
  await small.screenshot({ path: `${options.screenshots}/page-phone.png` });
  await phone.close();
}

async function model() {
  const context = await browser.newContext();
  const page = await open(context, url);
  await connected(page);
  await page.waitForFunction(() => document.querySelectorAll("#provider option").length > 1, null, WAIT);
  result.picker = await page.evaluate(() => ({
    providers: [...document.querySelectorAll("#provider option")].map((o) => [o.value, o.textContent]),
    models: [...document.querySelectorAll("#model option")].map((o) => o.value),
  }));
  await page.selectOption("#provider", options.provider);
  result.models = await page.evaluate(() => [...document.querySelectorAll("#model option")].map((o) => o.value));
  if (options.model) await page.selectOption("#model", options.model);
  // 1. Hostile model output: inert.
  await type(page, options.user);
  await ended(page, 1);
  result.userText = await page.textContent(".bubble.user");
  result.meta = await page.textContent(".msg.assistant .meta");
  result.firstText = await page.textContent(".bubble.assistant .markdown");
  await page.hover(".bubble.user");
  await page.evaluate(() => {
    for (const a of document.querySelectorAll("#messages a")) a.click();
    for (const img of document.querySelectorAll("#messages img")) img.dispatchEvent(new Event("error"));
  });
  await page.waitForTimeout(200);
  result.injected = await injected(page);
  result.first = await messages(page);
  // 2. A reply that fails mid-stream: its partial, a caveat, Retry when retryable.
  await type(page, "this one fails");
  await ended(page, 2);
  result.failed = await page.evaluate(() => {
    const bubbles = document.querySelectorAll(".bubble.assistant");
    const bubble = bubbles[1];
    const caveat = bubble.querySelector(".caveat");
    return {
      error: bubble.classList.contains("error"),
      text: bubble.querySelector(".markdown").textContent,
      caveat: caveat.hidden ? null : caveat.querySelector("span").textContent,
      retry: !caveat.querySelector(".retry").hidden,
    };
  });
  result.errorState = await page.evaluate(() => {
    const e = window.chatsockPage.store.getState().error;
    return e && { code: e.code, retryable: e.retryable, partial: e.partial };
  });
  if (result.failed.retry) {
    await page.click(".bubble.assistant.error .retry");
    await page.waitForFunction(() => {
      const last = [...document.querySelectorAll(".bubble.assistant")].at(-1);
      return last && last.classList.contains("complete");
    }, null, WAIT);
    result.retried = await messages(page);
  }
  // 3. A refused request (before any text) is a bubble that says why, never empty.
  if (options.refuse) {
    await page.selectOption("#provider", "");
    await page.evaluate((m) => { window.chatsockPage.store.send(m, { model: "no-such-model" }); }, "refused");
    await page.waitForFunction(() => [...document.querySelectorAll(".bubble.assistant")].at(-1)?.classList.contains("error"), null, WAIT);
    result.refused = await page.evaluate(() => [...document.querySelectorAll(".bubble.assistant")].at(-1).textContent);
  }
  result.session = await sessionOf(page);
  result.violations = await page.evaluate(() => window.__violations.slice());
}

async function follow() {
  // Tab A (worker A) sends; tab B opens the URL on worker B mid-reply; A reloads mid-reply.
  const [urlA, urlB] = [url, options.other];
  const a = await open(await browser.newContext(), urlA);
  await connected(a);
  await type(a, options.message);
  await streaming(a, 1, 10);
  const session = await sessionOf(a);
  const b = await open(await browser.newContext(), `${urlB}#/s/${session}`);
  await connected(b);
  await streaming(b, 1, 1);
  result.bJoinedWhileStreaming = true;
  await a.reload();
  await connected(a);
  await a.waitForFunction(() => document.querySelector(".bubble.assistant"), null, WAIT);
  result.aAfterReload = await a.evaluate(() => document.querySelector(".msg.assistant").dataset.status);
  await ended(a, 1);
  await ended(b, 1);
  result.session = session;
  result.a = await messages(a);
  result.b = await messages(b);
  // A later reply sent from B reaches A live, in the same session.
  await type(b, options.second);
  await ended(b, 2);
  await ended(a, 2);
  result.a2 = await messages(a);
  result.b2 = await messages(b);
  result.bubblesA = await replies(a);
}

async function many() {
  // Several tabs at once over two workers: each sends its own message; a follower
  // tab per sender (on the other worker) opens its URL mid-reply.
  const urls = [url, options.other];
  const context = await browser.newContext(); // tabs of one browser window
  const senders = [];
  for (let i = 0; i < options.tabs; i += 1) senders.push(await open(context, urls[i % 2]));
  await Promise.all(senders.map(connected));
  await Promise.all(senders.map((page, i) => type(page, `tab ${i} asks about ${"x".repeat(i + 1)}`)));
  await Promise.all(senders.map((page) => streaming(page, 1, 1)));
  const followers = [];
  for (let i = 0; i < senders.length; i += 1) {
    const session = await sessionOf(senders[i]);
    followers.push(await open(context, `${urls[(i + 1) % 2]}#/s/${session}`));
  }
  await Promise.all([...senders, ...followers].map((page) => ended(page, 1)));
  result.tabs = [];
  for (let i = 0; i < senders.length; i += 1) {
    result.tabs.push({ session: await sessionOf(senders[i]), sender: await messages(senders[i]),
      follower: await messages(followers[i]), followerBubbles: await replies(followers[i]) });
  }
}

async function jwt() {
  const context = await browser.newContext();
  const page = await open(context, url);
  await page.waitForSelector("#auth:not([hidden])", WAIT);
  result.asked = await page.textContent("#auth-reason");
  await page.fill("#token-input", "not-a-token");
  await Promise.all([page.waitForEvent("load"), page.click("#auth-form button[type=submit]")]);
  await page.waitForSelector("#auth:not([hidden])", WAIT);
  result.refused = await page.textContent("#auth-reason");
  await page.fill("#token-input", options.token);
  await Promise.all([page.waitForEvent("load"), page.click("#auth-form button[type=submit]")]);
  await connected(page);
  result.panelHidden = await page.evaluate(() => document.getElementById("auth").hidden);
  result.stored = await page.evaluate(() => localStorage.getItem("chatsock.token") !== null);
  await type(page, "with a token");
  await ended(page, 1);
  result.messages = await messages(page);
  await page.waitForFunction(() => document.querySelectorAll("#sessions li").length === 1, null, WAIT);
  result.session = await sessionOf(page);
}

/** The socket.io events a tab emits: [[name, payload]], from its WebSocket frames. */
function emitted(page) {
  const sent = [];
  page.on("websocket", (ws) => ws.on("framesent", ({ payload }) => {
    const match = /^42\d*(\[.*)$/s.exec(String(payload));
    if (match) sent.push(JSON.parse(match[1]));
  }));
  return sent;
}

/** The n-th (1-based) reply's Thinking section and text, as shown. */
const thinkingOf = (page, n) => page.evaluate((n) => {
  const msg = document.querySelectorAll(".msg.assistant")[n - 1];
  if (!msg) return null;
  const details = msg.querySelector(".thinking");
  return {
    hidden: details.hidden, open: details.open, summary: details.querySelector("summary").textContent,
    reasoning: details.querySelector(".thinking-text").textContent,
    text: msg.querySelector(".bubble .markdown").textContent, status: msg.dataset.status,
    version: msg.querySelector(".versions").hidden ? null : msg.querySelector(".version-label").textContent,
    regenerate: !msg.querySelector(".regenerate").hidden,
  };
}, n);

/** Waits until the n-th reply shows reasoning with no text yet, its Thinking section open. */
const thinkingNow = (page, n, chars = 1) => page.waitForFunction(([n, chars]) => {
  const msg = document.querySelectorAll(".msg.assistant")[n - 1];
  const details = msg?.querySelector(".thinking");
  return details && !details.hidden && details.open &&
    details.querySelector(".thinking-text").textContent.length >= chars &&
    msg.querySelector(".bubble .markdown").textContent === "";
}, [n, chars], WAIT);

const stored = (page) => page.evaluate(() => window.chatsockPage.store.getState().messages
  .map((m) => ({ role: m.role, content: m.content, status: m.status, reasoning: m.reasoning ?? null,
    versions: (m.versions ?? []).map((v) => ({ content: v.content, status: v.status, reasoning: v.reasoning ?? null })),
    result: m.result ? { reasoning_chars: m.result.reasoning_chars ?? null, reasoning_ms: m.result.reasoning_ms ?? null } : null })));

async function reasoning() {
  // Think on: the reply reasons, shown open until text comes; a reload mid-reasoning
  // shows the same; Think off and Regenerate replace the reply, the first kept.
  const context = await browser.newContext();
  const page = await open(context, url);
  const sent = emitted(page);
  await connected(page);
  result.thinkOff = await page.getAttribute("#think", "aria-pressed");
  if (options.think) await page.click("#think");
  result.thinkOn = await page.getAttribute("#think", "aria-pressed");
  await type(page, options.message);
  await thinkingNow(page, 1, 10);
  result.during = await thinkingOf(page, 1);
  if (options.reload) {
    await page.reload();
    await connected(page);
    // The reply comes back with the session (a missing one is not "shown").
    await page.waitForFunction(() => document.querySelector(".msg.assistant .thinking")?.hidden === false, null, WAIT);
    result.afterReload = await thinkingOf(page, 1);
    result.thinkAfterReload = await page.getAttribute("#think", "aria-pressed");
  }
  await page.waitForFunction(() => document.querySelector(".msg.assistant .bubble .markdown").textContent.length >= 5, null, WAIT);
  result.answering = await thinkingOf(page, 1);
  await ended(page, 1);
  await page.waitForSelector(".msg.assistant .regenerate:not([hidden])", WAIT);
  result.ended = await thinkingOf(page, 1);
  result.first = await stored(page);
  result.injected = await injected(page);
  if (options.regenerate) {
    // Think off: the new reply does not reason; the first keeps its reasoning.
    if (options.think) await page.click("#think");
    await page.click(".msg.assistant .regenerate");
    await page.waitForFunction(() => document.querySelector(".msg.assistant .version-label")?.textContent === "version 2 of 2" &&
      document.querySelector(".msg.assistant .bubble").classList.contains("complete"), null, WAIT);
    result.regenerated = await thinkingOf(page, 1);
    result.replies = await replies(page);
    result.second = await stored(page);
    await page.click(".msg.assistant .versions .older");
    result.olderVersion = await thinkingOf(page, 1);
    result.olderDisabled = await page.evaluate(() => document.querySelector(".msg.assistant .older").disabled);
    await page.click(".msg.assistant .versions .newer");
    result.newerVersion = await thinkingOf(page, 1);
    // The versions come back from the server after a reload.
    await page.reload();
    await connected(page);
    await page.waitForFunction(() => document.querySelector(".msg.assistant .version-label")?.textContent === "version 2 of 2", null, WAIT);
    result.reloaded = await stored(page);
    await page.click(".msg.assistant .versions .older");
    result.reloadedOlder = await thinkingOf(page, 1);
  }
  result.emitted = sent.map(([name, payload]) => [name, payload]).filter(([name]) => name === "chat_stream" || name === "chat_regenerate");
  result.session = await sessionOf(page);
  result.violations = await page.evaluate(() => window.__violations.slice());
}

try {
  await ({ basics, model, follow, many, jwt, screens, reasoning })[scenario]();
} catch (err) {
  result.failure = String(err && err.stack ? err.stack : err);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
