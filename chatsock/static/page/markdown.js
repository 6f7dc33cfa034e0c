// Markdown to safe DOM: marked parses, DOMPurify removes anything active (scripts,
// event handlers, javascript: URLs, styles the CSP would refuse), highlight.js
// colours code blocks, and each block gets a copy button.
import DOMPurify from "dompurify";
import hljs from "highlight.js/lib/common";
import { Marked } from "marked";

const marked = new Marked({ gfm: true, breaks: false });
// HTML in a reply is shown as the text it is, as chat apps do: a model quoting
// markup means the markup. DOMPurify below still guards whatever marked makes.
marked.use({ renderer: { html: ({ text }) => escapeHtml(text) } });

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const purifier = DOMPurify(window);
// Links from a model open elsewhere and tell the target nothing.
purifier.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});
const PURIFY = {
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "iframe", "svg", "math"],
  FORBID_ATTR: ["style", "id", "name"],
  ADD_ATTR: ["target"],
};

/** `text` as sanitised HTML. */
export function toSafeHtml(text) {
  return purifier.sanitize(marked.parse(text), PURIFY);
}

/** Replaces the children of `element` with `text` rendered. */
export function renderMarkdown(element, text) {
  element.innerHTML = toSafeHtml(text);
  for (const code of element.querySelectorAll("pre > code")) decorate(code);
}

function decorate(code) {
  const language = [...code.classList].find((c) => c.startsWith("language-"))?.slice(9) ?? "";
  const source = code.textContent;
  if (language && hljs.getLanguage(language)) {
    // highlight() escapes the source itself: its output is spans around text.
    code.innerHTML = hljs.highlight(source, { language, ignoreIllegals: true }).value;
    code.classList.add("hljs");
  }
  const pre = code.parentElement;
  const frame = document.createElement("div");
  frame.className = "code";
  const bar = document.createElement("div");
  bar.className = "code-bar";
  const label = document.createElement("span");
  label.textContent = language || "text";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy";
  copy.textContent = "Copy";
  copy.title = "Copy this code";
  copy.addEventListener("click", () => copyText(copy, source));
  bar.append(label, copy);
  pre.replaceWith(frame);
  frame.append(bar, pre);
}

async function copyText(button, text) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Copy failed";
  }
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
}
