// The session list: one link per session (`#/s/<id>`), new chat and delete.
export class Sidebar {
  constructor(client, { onDelete }) {
    this.client = client;
    this.list = document.getElementById("sessions");
    this.onDelete = onDelete;
    this.current = undefined;
    this.loading = null;
    this.again = false;
    const app = document.getElementById("app");
    document.getElementById("menu").addEventListener("click", () => app.classList.toggle("sidebar-open"));
    // On a phone the list covers the chat: picking a chat, or a tap beside the
    // list, closes it.
    this.list.addEventListener("click", (event) => {
      if (event.target.closest("a")) app.classList.remove("sidebar-open");
    });
    document.querySelector(".main").addEventListener("click", (event) => {
      if (!event.target.closest("#menu")) app.classList.remove("sidebar-open");
    });
  }

  /** Reloads the list (coalesced: one request at a time, one more if asked meanwhile). */
  refresh() {
    if (this.loading) {
      this.again = true;
      return this.loading;
    }
    this.loading = this.client.sessions({ limit: 100 }).then(
      (sessions) => this.show(sessions),
      () => {}, // the list stays as it was; the next refresh tries again
    ).finally(() => {
      this.loading = null;
      if (this.again) {
        this.again = false;
        void this.refresh();
      }
    });
    return this.loading;
  }

  show(sessions) {
    this.list.replaceChildren(...sessions.map((s) => this.item(s)));
    this.mark(this.current);
  }

  item(session) {
    const li = document.createElement("li");
    li.dataset.session = session.session_id;
    const link = document.createElement("a");
    link.href = `#/s/${session.session_id}`;
    link.textContent = session.title || "New chat";
    link.title = session.title || session.session_id;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "delete";
    remove.textContent = "×";
    remove.setAttribute("aria-label", "Delete this chat");
    remove.addEventListener("click", async () => {
      remove.disabled = true;
      try {
        await this.client.deleteSession(session.session_id);
        li.remove();
        this.onDelete(session.session_id);
      } catch {
        remove.disabled = false;
      }
    });
    li.append(link, remove);
    return li;
  }

  /** Highlights the session shown. */
  mark(sessionId) {
    this.current = sessionId;
    for (const li of this.list.children) li.classList.toggle("current", li.dataset.session === sessionId);
  }
}
