// The minimal chatsock page: stream a reply into a bubble, stop it, and pick
// up where it was after a reconnect. Text is only ever set with textContent.
(() => {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const messages = $("messages");
  const input = $("input");
  const stopButton = $("stop");
  const status = $("status");
  const state = {
    sessionId: sessionStorage.getItem("chatsock.session") || null,
    streamId: null,
    lastSeq: 0,
    pending: new Map(),
    bubble: null,
  };

  const socket = io({ transports: ["websocket", "polling"] });

  function bubble(role, text) {
    const el = document.createElement("div");
    el.className = `bubble ${role}`;
    el.textContent = text;
    messages.appendChild(el);
    messages.scrollTop = messages.scrollHeight;
    return el;
  }

  function setStreaming(streamId) {
    if (streamId !== state.streamId) state.pending.clear();
    state.streamId = streamId;
    stopButton.disabled = !streamId;
  }

  function rememberSession(id) {
    state.sessionId = id;
    sessionStorage.setItem("chatsock.session", id);
  }

  socket.on("connect", () => {
    status.textContent = "connected";
    if (!state.sessionId) return;
    socket.emit("session_join", { session_id: state.sessionId }, (reply) => {
      if (!reply.ok) return;
      if (!messages.childElementCount) {
        for (const m of reply.messages) {
          const el = bubble(m.role, m.content);
          if (m.status !== "complete") el.classList.add(m.status);
        }
      }
      const active = reply.active_stream;
      if (active) {
        if (active.stream_id !== state.streamId) {
          state.bubble = bubble("assistant", "");
          state.lastSeq = 0;
        }
        setStreaming(active.stream_id);
        socket.emit("chat_resume", { stream_id: active.stream_id, after: state.lastSeq });
      }
    });
  });
  socket.on("disconnect", () => { status.textContent = "reconnecting…"; });

  socket.on("chat_stream_start", (e) => {
    if (e.stream_id === state.streamId && state.bubble) return;
    state.bubble = bubble("assistant", "");
    state.lastSeq = 0;
    setStreaming(e.stream_id);
  });
  // Tokens are appended strictly in seq order: after a reconnect the missed
  // ones (chat_resume) may arrive interleaved with live ones.
  socket.on("chat_token", (e) => {
    if (e.stream_id !== state.streamId || e.seq <= state.lastSeq) return;
    state.pending.set(e.seq, e.token);
    let text = "";
    while (state.pending.has(state.lastSeq + 1)) {
      state.lastSeq += 1;
      text += state.pending.get(state.lastSeq);
      state.pending.delete(state.lastSeq);
    }
    if (text) {
      state.bubble.textContent += text;
      messages.scrollTop = messages.scrollHeight;
    }
  });
  socket.on("chat_complete", (e) => {
    if (e.stream_id !== state.streamId) return;
    state.bubble.textContent = e.full_response;
    if (e.stopped) state.bubble.classList.add("stopped");
    setStreaming(null);
  });
  socket.on("chat_stream_error", (e) => {
    if (e.stream_id !== state.streamId) return;
    state.bubble.textContent = e.partial;
    state.bubble.classList.add("error");
    bubble("assistant error", `Error (${e.code}): ${e.error}`);
    setStreaming(null);
  });

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    bubble("user", text);
    const payload = { message: text, client_message_id: crypto.randomUUID() };
    if (state.sessionId) payload.session_id = state.sessionId;
    socket.emit("chat_stream", payload, (ack) => {
      if (!ack.ok) {
        bubble("assistant error", `Error (${ack.error.code}): ${ack.error.message}`);
        return;
      }
      rememberSession(ack.session_id);
      if (state.streamId !== ack.stream_id) {
        state.bubble = bubble("assistant", "");
        state.lastSeq = 0;
        setStreaming(ack.stream_id);
      }
    });
  });

  stopButton.addEventListener("click", () => {
    if (state.streamId) socket.emit("chat_stop", { stream_id: state.streamId });
  });
})();
