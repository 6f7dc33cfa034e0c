import { useState } from "react";
import { useChatsock } from "chatsock-client/react";

export function Chat({ url, reasoning }: { url: string; reasoning?: boolean }) {
  const { messages, status, send, stop, error, retry, regenerate } = useChatsock({ url, reasoning });
  const [text, setText] = useState("");
  const busy = status === "submitted" || status === "streaming";
  return (
    <form onSubmit={(e) => { e.preventDefault(); send(text); setText(""); }}>
      {messages.map((m) => (
        <div key={m.id}>
          {m.reasoning && <details><summary>Thinking…</summary>{m.reasoning}</details>}
          <p className={m.role}>{m.content}</p>
          {m.versions && <small>{m.versions.length + 1} versions</small>}
        </div>
      ))}
      {error && <p role="alert">{error.message} <button type="button" onClick={retry}>Retry</button></p>}
      <input value={text} onChange={(e) => setText(e.target.value)} />
      {busy ? <button type="button" onClick={stop}>Stop</button> : <button>Send</button>}
      {!busy && messages.length > 0 && <button type="button" onClick={() => regenerate()}>Regenerate</button>}
    </form>
  );
}
