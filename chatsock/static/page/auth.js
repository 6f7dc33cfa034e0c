// The token for the `jwt` auth mode: pasted once, kept in localStorage. A real
// app passes its own (docs/clients.md); this is for trying the page.
const KEY = "chatsock.token";

export function storedToken() {
  return localStorage.getItem(KEY) || undefined;
}

/** Fetches a JSON API path with the stored token; `{status, body}`. */
export async function apiGet(path) {
  const token = storedToken();
  const response = await fetch(path, {
    headers: token ? { Authorization: `Bearer ${token}` } : {},
  });
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON: a proxy's page; the status says enough.
  }
  return { status: response.status, body };
}

/** Wires the token panel: shown by `show(reason)`, saving reloads the page. */
export function tokenPanel() {
  const panel = document.getElementById("auth");
  const form = document.getElementById("auth-form");
  const input = document.getElementById("token-input");
  const reason = document.getElementById("auth-reason");
  const button = document.getElementById("token-button");
  const show = (why) => {
    reason.textContent = why;
    panel.hidden = false;
    button.hidden = false;
    input.focus();
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (token) localStorage.setItem(KEY, token);
    else localStorage.removeItem(KEY);
    location.reload();
  });
  document.getElementById("token-forget").addEventListener("click", () => {
    localStorage.removeItem(KEY);
    location.reload();
  });
  button.addEventListener("click", () => {
    if (panel.hidden) show("Replace the token this page sends.");
    else panel.hidden = true;
  });
  if (storedToken()) button.hidden = false;
  return { show };
}
