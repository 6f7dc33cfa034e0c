// The chatsock page: chatsock-client's ChatStore drawn as a chat, with a session
// list, a provider picker and the page's URL naming the session (#/s/<id>).
import { ChatStore, connect } from "chatsock-client";
import { apiGet, storedToken, tokenPanel } from "./auth.js";
import { Picker, ThinkToggle } from "./picker.js";
import { Sidebar } from "./sidebar.js";
import { initTheme } from "./theme.js";
import { Thread } from "./thread.js";

const $ = (id) => document.getElementById(id);
const SESSION_HASH = /^#\/s\/([A-Za-z0-9_-]{1,128})$/;

function hashSession() {
  return SESSION_HASH.exec(location.hash)?.[1];
}

async function start() {
  initTheme();
  const auth = tokenPanel();
  const status = $("status");
  const picker = new Picker();
  const think = new ThinkToggle();
  // Unreachable: no picker; the client keeps trying to connect on its own.
  const offer = await apiGet("/api/providers").catch(() => ({ status: 0, body: null }));
  if (offer.status === 401) {
    status.textContent = "token needed";
    auth.show(storedToken()
      ? `The server refused the token: ${offer.body?.error?.message ?? "unauthorized"}. Paste another.`
      : "This server needs a token (auth mode jwt). Paste one to chat.");
    return;
  }
  if (offer.status === 200) picker.show(offer.body);

  // The page shows the model's reasoning: every send, join and resume asks for it.
  const client = connect("", { token: () => storedToken() ?? "", reasoning: true });
  const store = new ChatStore({ client, sessionId: hashSession() });
  // What each request asks for: the picker's provider and model, and Think's budget.
  const choice = () => ({ ...picker.choice(), ...think.options() });
  const thread = new Thread($("messages"), {
    onRetry: () => track(store.retry()),
    onRegenerate: () => track(store.regenerate(choice())),
  });
  const sidebar = new Sidebar(client, {
    onDelete: (sessionId) => {
      if (sessionId === store.getState().sessionId) location.hash = "#/";
    },
  });
  const input = $("input");
  const send = $("send");
  const stop = $("stop");

  // Time to first token, as this tab saw it.
  function track(handle) {
    if (handle === undefined) return;
    const sent = performance.now();
    const off = handle.on("token", () => {
      off();
      if (handle.streamId) thread.firstToken.set(handle.streamId, (performance.now() - sent) / 1000);
    });
  }

  let busy = false;
  let lastStatus = "idle";
  store.subscribe(() => {
    const state = store.getState();
    thread.render(state);
    busy = state.status === "submitted" || state.status === "streaming";
    stop.hidden = !busy;
    send.hidden = busy;
    stop.disabled = !busy;
    const connection = state.connection;
    status.textContent = connection === "connecting" ? "connecting…" : connection === "reconnecting" ? "reconnecting…" : connection;
    status.dataset.state = connection;
    if (state.sessionId && state.sessionId !== hashSession()) {
      history.replaceState(null, "", `#/s/${state.sessionId}`);
    }
    sidebar.mark(state.sessionId);
    // A session that could not be opened (deleted, another user's) says so.
    const notice = $("notice");
    const failed = state.status === "error" && state.messages.length === 0 && state.error;
    notice.hidden = !failed;
    notice.textContent = failed ? `This chat could not be opened (${state.error.message}).` : "";
    // A reply ended, or a session appeared: its title and order changed.
    if (state.status !== lastStatus && (state.status === "idle" || state.status === "error")) {
      void sidebar.refresh();
    }
    lastStatus = state.status;
  });
  client.on("stream", () => void sidebar.refresh());
  client.on("session_deleted", () => void sidebar.refresh());
  client.on("connection", (connection) => {
    if (connection === "connected") void sidebar.refresh();
  });
  thread.render(store.getState());
  void sidebar.refresh();

  window.addEventListener("hashchange", () => {
    const id = hashSession();
    if (id !== store.getState().sessionId) void store.open(id);
    sidebar.mark(id);
    input.focus();
  });
  $("new-chat").addEventListener("click", () => {
    $("app").classList.remove("sidebar-open");
    if (location.hash === "#/" || !location.hash) void store.open(undefined);
    else location.hash = "#/";
    input.focus();
  });

  function submit() {
    const text = input.value.trim();
    if (!text || busy) return;
    input.value = "";
    grow();
    track(store.send(text, choice()));
  }
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  // Enter sends; Shift+Enter is a new line; an IME composing text keeps its Enter.
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  function grow() {
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, 240)}px`;
  }
  input.addEventListener("input", grow);
  stop.addEventListener("click", () => void store.stop());
  // Esc stops the reply, wherever the focus is.
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && busy) {
      event.preventDefault();
      void store.stop();
    }
  });
  // For the browser's console and the tests: the store holds the text as sent.
  window.chatsockPage = { store, client };
  input.focus();
}

void start();
