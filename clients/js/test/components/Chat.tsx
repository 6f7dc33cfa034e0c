import { useState } from "react";
import { useChatsock } from "chatsock-client/react";

export function Chat({ url }: { url: string }) {
  const { messages, status, send, stop, error, retry } = useChatsock({ url });
  const [text, setText] = useState("");
  const busy = status === "submitted" || status === "streaming";
  return (
    <form onSubmit={(e) => { e.preventDefault(); send(text); setText(""); }}>
      {messages.map((m) => <p key={m.id} className={m.role}>{m.content}</p>)}
      {error && <p role="alert">{error.message} <button type="button" onClick={retry}>Retry</button></p>}
      <input value={text} onChange={(e) => setText(e.target.value)} />
      {busy ? <button type="button" onClick={stop}>Stop</button> : <button>Send</button>}
    </form>
  );
}
