// Drives the demo page in Debian's headless Chromium (playwright-core, no
// browser download). Usage: node tests/js/page.mjs <url> <chromium-path>
// Prints one JSON object with what the page showed.
import { launch } from "./browser.mjs";

const [url, executablePath] = process.argv.slice(2);
const browser = await launch(executablePath);
const result = {};
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (err) => errors.push(String(err)));
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById("status").textContent === "connected");

  // 1. A reply streams into an assistant bubble, as text.
  const hostile = "<img src=x onerror=window.pwned=1> rivers";
  await page.fill("#input", hostile);
  await page.click("#send");
  await page.waitForFunction(() => {
    const bubbles = document.querySelectorAll(".bubble.assistant");
    return bubbles.length === 1 && document.getElementById("stop").disabled &&
      bubbles[0].textContent.includes("```python");
  }, null, { timeout: 20000 });
  result.userText = await page.textContent(".bubble.user");
  result.firstReply = await page.textContent(".bubble.assistant");
  result.injected = await page.evaluate(() => ({
    imgs: document.querySelectorAll("#messages img").length,
    pwned: Boolean(window.pwned),
  }));

  // 2. The stop button stops the next reply part-way.
  await page.fill("#input", "stop this one");
  await page.click("#send");
  await page.waitForFunction(() => {
    const bubbles = document.querySelectorAll(".bubble.assistant");
    return bubbles.length === 2 && bubbles[1].textContent.length > 0 &&
      !document.getElementById("stop").disabled;
  }, null, { timeout: 20000 });
  await page.click("#stop");
  await page.waitForFunction(() => document.querySelectorAll(".bubble.assistant")[1]
    .classList.contains("stopped"), null, { timeout: 20000 });
  result.stoppedReply = await page.evaluate(
    () => document.querySelectorAll(".bubble.assistant")[1].textContent);
  result.stopDisabledAfter = await page.evaluate(() => document.getElementById("stop").disabled);
  result.sessionId = await page.evaluate(() => sessionStorage.getItem("chatsock.session"));
  result.errors = errors;
} catch (err) {
  result.failure = String(err);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
