// The conversation: one view per message of the store, updated in place. A
// reply's markdown is rendered at most once per frame while it streams.
import { renderMarkdown } from "./markdown.js";

export class Thread {
  constructor(container, { onRetry, onRegenerate }) {
    this.container = container;
    this.onRetry = onRetry;
    this.onRegenerate = onRegenerate;
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
        view = message.role === "user" ? userView() : assistantView(this.onRetry, this.onRegenerate);
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

function assistantView(onRetry, onRegenerate) {
  const root = el("div", "msg assistant");
  const thinking = el("details", "thinking");
  thinking.hidden = true;
  const thinkingSummary = el("summary", "", "Thinking…");
  const thinkingText = el("div", "thinking-text markdown");
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
  // Under the last reply: Regenerate, and the versions a regenerate kept (read-only).
  const actions = el("div", "actions");
  const versions = el("span", "versions");
  const older = el("button", "older", "‹");
  older.type = "button";
  older.title = "Earlier version";
  older.setAttribute("aria-label", "Earlier version");
  const versionLabel = el("span", "version-label");
  const newer = el("button", "newer", "›");
  newer.type = "button";
  newer.title = "Later version";
  newer.setAttribute("aria-label", "Later version");
  versions.append(older, versionLabel, newer);
  const regenerate = el("button", "regenerate", "↻ Regenerate");
  regenerate.type = "button";
  regenerate.title = "A new reply in place of this one";
  regenerate.addEventListener("click", () => onRegenerate());
  actions.append(versions, regenerate);
  root.append(thinking, bubble, meta, actions);
  bubble.append(caveat);

  let shown = null;
  let frame = 0;
  let text = "";
  let reasoning = "";
  let shownReasoning = null;
  // The stream this view last drew, and where its Thinking section is: "none"
  // (no reasoning yet), "thinking" (opened while reasoning), "answered".
  let streamId;
  let phase = "none";
  // Which version is shown: null for the current reply, else an index into `versions`.
  let viewing = null;
  let last = { message: null, context: null };
  const paint = () => {
    frame = 0;
    if (shown !== text) {
      shown = text;
      renderMarkdown(body, text);
    }
    if (shownReasoning !== reasoning) {
      shownReasoning = reasoning;
      renderMarkdown(thinkingText, reasoning);
    }
  };
  const browse = (step) => {
    const count = last.message?.versions?.length ?? 0;
    const at = (viewing ?? count) + step;
    viewing = at >= count ? null : Math.max(0, at);
    draw(last.message, last.context);
  };
  older.addEventListener("click", () => browse(-1));
  newer.addEventListener("click", () => browse(1));

  function draw(message, context) {
    const { state, firstToken } = context;
    const count = message.versions?.length ?? 0;
    if (viewing !== null && viewing >= count) viewing = null;
    const live = message.status === "pending" || message.status === "streaming";
    if (live) viewing = null; // a new reply streams: show it
    const version = viewing === null ? null : message.versions[viewing];
    const shownMessage = version ?? message;
    root.dataset.status = shownMessage.status;
    root.dataset.version = String(viewing === null ? count + 1 : viewing + 1);
    for (const s of ["pending", "streaming", "complete", "stopped", "error"]) {
      bubble.classList.toggle(s, shownMessage.status === s);
    }
    bubble.classList.toggle("old-version", version !== null);
    text = shownMessage.content;
    reasoning = shownMessage.reasoning ?? "";
    if (live) {
      if (!frame) frame = requestAnimationFrame(paint);
    } else {
      if (frame) cancelAnimationFrame(frame);
      paint();
    }
    // Typing dots until the first token (or the first reasoning).
    if (message.status === "pending" && !text && !reasoning) {
      if (!dots.isConnected) bubble.insertBefore(dots, body);
    } else if (dots.isConnected) {
      dots.remove();
    }
    showThinking(shownMessage, live && version === null, version !== null);
    if (version === null) showCaveat(message, context.last, state);
    else caveat.hidden = true;
    meta.textContent = version === null ? metrics(message, firstToken) : versionMetrics(version);
    // Regenerate: the last reply, once nothing streams, when its stream ran.
    const busy = state.status === "submitted" || state.status === "streaming";
    regenerate.hidden = !(context.last && !busy && !live && message.streamId && version === null);
    versions.hidden = count === 0;
    versionLabel.textContent = `version ${viewing === null ? count + 1 : viewing + 1} of ${count + 1}`;
    older.disabled = live || viewing === 0;
    newer.disabled = live || viewing === null;
    actions.hidden = regenerate.hidden && versions.hidden;
  }

  return {
    role: "assistant",
    root,
    update(message, context) {
      last = { message, context };
      if (message.streamId !== streamId) {
        // Another stream in this place (a regenerate): its own Thinking section.
        streamId = message.streamId;
        phase = "none";
        viewing = null;
      }
      draw(message, context);
    },
  };

  // The reasoning, above the reply: open while the model thinks and no text has
  // come, collapsed once text arrives; after that, as the reader leaves it.
  function showThinking(message, live, old) {
    const thought = message.reasoning ?? "";
    thinking.hidden = !thought;
    if (!thought) return;
    if (old) {
      thinking.open = false;
    } else if (phase === "none") {
      phase = live && !message.content ? "thinking" : "answered";
      thinking.open = phase === "thinking";
    } else if (phase === "thinking" && (message.content || !live)) {
      phase = "answered";
      thinking.open = false;
    }
    thinking.dataset.phase = phase;
    thinkingSummary.textContent = live && !message.content ? "Thinking…" : thoughtFor(message.result);
  }

  function showCaveat(message, last, state) {
    if (message.status !== "error") {
      // A refused regenerate leaves the reply as it was, and says why under it.
      const refused = last && state.status === "error" && state.error;
      caveat.hidden = !refused;
      if (refused) {
        caveatText.textContent = `Could not regenerate: ${state.error.message}.`;
        retry.hidden = !state.error.retryable;
      }
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

/** "Thought for 1.2 s · 245 characters" from chat_complete, when it says. */
function thoughtFor(result) {
  const ms = result?.reasoning_ms;
  const chars = result?.reasoning_chars;
  if (typeof ms !== "number") return "Thought process";
  const parts = [`Thought for ${(ms / 1000).toFixed(1)} s`];
  if (typeof chars === "number") parts.push(`${chars} characters`);
  return parts.join(" · ");
}

/** An earlier version: which model wrote it, and how it ended. */
function versionMetrics(version) {
  const parts = ["earlier version"];
  if (version.provider) parts.push(version.model ? `${version.provider}/${version.model}` : version.provider);
  if (version.status !== "complete") parts.push(version.status);
  return parts.join(" · ");
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
