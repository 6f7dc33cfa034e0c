// The conversation: one view per message of the store, updated in place. A
// reply's markdown is rendered at most once per frame while it streams.
import { renderMarkdown } from "./markdown.js";

export class Thread {
  constructor(container, { onRetry }) {
    this.container = container;
    this.onRetry = onRetry;
    this.views = [];
    this.sessionId = undefined;
    /** stream id -> seconds from send to first token, measured by this tab. */
    this.firstToken = new Map();
  }

  render(state) {
    if (state.sessionId !== this.sessionId && !(this.sessionId === undefined && state.messages.length)) {
      this.clear();
    }
    this.sessionId = state.sessionId;
    const follow = this.nearBottom();
    const { messages } = state;
    messages.forEach((message, i) => {
      let view = this.views[i];
      if (view === undefined || view.role !== message.role) {
        if (view !== undefined) this.drop(i);
        view = message.role === "user" ? userView() : assistantView(this.onRetry);
        this.views[i] = view;
        this.container.append(view.root);
      }
      view.update(message, { last: i === messages.length - 1, state, firstToken: this.firstToken });
    });
    this.drop(messages.length);
    document.getElementById("empty").hidden = messages.length > 0;
    if (follow) this.container.scrollTop = this.container.scrollHeight;
  }

  clear() {
    this.drop(0);
  }

  drop(from) {
    for (const view of this.views.splice(from)) view.root.remove();
  }

  nearBottom() {
    const c = this.container;
    return c.scrollHeight - c.scrollTop - c.clientHeight < 80;
  }
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function userView() {
  const root = el("div", "msg user");
  const bubble = el("div", "bubble user");
  root.append(bubble);
  return {
    role: "user",
    root,
    update(message) {
      // The user's text is shown as typed: text, never HTML.
      if (bubble.textContent !== message.content) bubble.textContent = message.content;
    },
  };
}

function assistantView(onRetry) {
  const root = el("div", "msg assistant");
  const thinking = el("details", "thinking");
  thinking.hidden = true;
  const thinkingSummary = el("summary", "", "Thinking…");
  const thinkingText = el("div", "thinking-text");
  thinking.append(thinkingSummary, thinkingText);
  const bubble = el("div", "bubble assistant");
  const body = el("div", "markdown");
  const dots = el("span", "dots");
  dots.setAttribute("aria-label", "The reply is being written");
  dots.append(el("span"), el("span"), el("span"));
  bubble.append(body);
  const caveat = el("div", "caveat");
  caveat.hidden = true;
  const caveatText = el("span");
  const retry = el("button", "retry", "Retry");
  retry.type = "button";
  retry.addEventListener("click", () => onRetry());
  caveat.append(caveatText, retry);
  const meta = el("div", "meta");
  root.append(thinking, bubble, meta);
  bubble.append(caveat);

  let shown = null;
  let frame = 0;
  let text = "";
  const paint = () => {
    frame = 0;
    if (shown === text) return;
    shown = text;
    renderMarkdown(body, text);
  };

  return {
    role: "assistant",
    root,
    update(message, { last, state, firstToken }) {
      root.dataset.status = message.status;
      for (const s of ["pending", "streaming", "complete", "stopped", "error"]) {
        bubble.classList.toggle(s, message.status === s);
      }
      text = message.content;
      const live = message.status === "pending" || message.status === "streaming";
      if (live) {
        if (!frame) frame = requestAnimationFrame(paint);
      } else {
        if (frame) cancelAnimationFrame(frame);
        paint();
      }
      // Typing dots until the first token.
      if (message.status === "pending" && !text) {
        if (!dots.isConnected) bubble.insertBefore(dots, body);
      } else if (dots.isConnected) {
        dots.remove();
      }
      showThinking(message.reasoning);
      showCaveat(message, last, state);
      meta.textContent = metrics(message, firstToken);
    },
  };

  // The hook for reasoning streams: a collapsible section above the reply.
  function showThinking(reasoning) {
    thinking.hidden = !reasoning;
    if (reasoning && thinkingText.textContent !== reasoning) thinkingText.textContent = reasoning;
  }

  function showCaveat(message, last, state) {
    if (message.status !== "error") {
      caveat.hidden = true;
      return;
    }
    const error = last ? state.error : null;
    // The error's message starts with its code ("provider_error: ...").
    const why = error?.message ?? message.errorCode ?? "error";
    caveatText.textContent = message.content
      ? `The reply stopped early (${why}). The text above is what arrived.`
      : `No reply: ${why}.`;
    retry.hidden = !(last && error?.retryable);
    caveat.hidden = false;
  }
}

/** "31.4 tok/s · first token 0.21 s · 21 in / 57 out · openai/gpt-4o-mini". */
function metrics(message, firstToken) {
  const parts = [];
  const result = message.result;
  if (result) {
    parts.push(`${result.tokens_per_second.toFixed(1)} tok/s`);
  }
  const first = message.streamId ? firstToken.get(message.streamId) : undefined;
  if (first !== undefined) parts.push(`first token ${first.toFixed(2)} s`);
  if (result?.usage) {
    const u = result.usage;
    parts.push(`${u.input_tokens ?? "?"} in / ${u.output_tokens ?? "?"} out tokens`);
  }
  if (result) parts.push(`${result.duration.toFixed(2)} s`);
  if (message.provider) parts.push(message.model ? `${message.provider}/${message.model}` : message.provider);
  if (message.status === "stopped") parts.push("stopped");
  return parts.join(" · ");
}
