/** React binding: `useChatsock()`, a thin view of ChatStore. */
import { useCallback, useEffect, useState, useSyncExternalStore } from "react";

import type { ChatClient, ConnectOptions, RegenerateOptions, SendOptions } from "./client.js";
import { connect } from "./index.js";
import { ChatStore, type ChatState } from "./store.js";
import type { StreamHandle } from "./stream.js";

export type { ChatMessage, ChatMessageVersion, ChatState, ChatStatus } from "./store.js";

export interface UseChatsockOptions extends ConnectOptions {
  /** The server's origin; ignored when `client` is given. */
  url?: string;
  /** A client you made with connect(); the hook then does not close it. */
  client?: ChatClient;
  /** The session to open (its messages, and its reply in flight). */
  sessionId?: string;
  /** Defaults for every send. */
  provider?: string;
  model?: string;
  systemPrompt?: string;
}

export interface UseChatsock extends ChatState {
  send: (text: string, options?: SendOptions) => StreamHandle | undefined;
  stop: () => Promise<boolean>;
  retry: () => StreamHandle | undefined;
  /** A new reply to the last user message, in the place of the last reply (kept in its `versions`). */
  regenerate: (options?: RegenerateOptions) => StreamHandle | undefined;
  /** Opens another session (or a new chat, with undefined). */
  open: (sessionId: string | undefined) => Promise<void>;
  /** The store, for anything the hook does not expose. */
  store: ChatStore;
}

export function useChatsock(options: UseChatsockOptions = {}): UseChatsock {
  const { url = "", client, sessionId, provider, model, systemPrompt } = options;
  const [store] = useState(
    () => new ChatStore({ sessionId, defaults: { provider, model, systemPrompt, reasoning: options.reasoning } }),
  );
  useEffect(() => {
    const own = client ?? connect(url, options);
    store.setClient(own);
    return () => {
      store.setClient(null);
      if (client === undefined) own.close();
    };
    // The connection is made again only when the server or the client changes.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [url, client, options.transport]);
  useEffect(() => {
    if (store.getState().sessionId !== sessionId) void store.open(sessionId);
  }, [store, sessionId]);
  const state = useSyncExternalStore(store.subscribe, store.getState, store.getState);
  const send = useCallback(
    (text: string, extra?: SendOptions) => store.send(text, { provider, model, systemPrompt, ...extra }),
    [store, provider, model, systemPrompt],
  );
  const regenerate = useCallback(
    (extra?: RegenerateOptions) => store.regenerate({ provider, model, systemPrompt, ...extra }),
    [store, provider, model, systemPrompt],
  );
  const open = useCallback((id: string | undefined) => store.open(id), [store]);
  return { ...state, send, stop: store.stop, retry: store.retry, regenerate, open, store };
}
