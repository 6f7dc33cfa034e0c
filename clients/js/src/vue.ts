/** Vue binding: the `useChatsock()` composable, a thin view of ChatStore. */
import { getCurrentScope, onScopeDispose, readonly, shallowRef, type Ref, type ShallowRef } from "vue";

import type { ChatClient, ConnectOptions, RegenerateOptions, SendOptions } from "./client.js";
import { connect } from "./index.js";
import type { ChatsockError } from "./errors.js";
import { ChatStore, type ChatMessage, type ChatStatus } from "./store.js";
import type { ConnectionStatus } from "./client.js";
import type { StreamHandle } from "./stream.js";

export type { ChatMessage, ChatMessageVersion, ChatState, ChatStatus } from "./store.js";

export interface UseChatsockOptions extends ConnectOptions {
  url?: string;
  client?: ChatClient;
  sessionId?: string;
  provider?: string;
  model?: string;
  systemPrompt?: string;
}

export interface UseChatsock {
  messages: Readonly<ShallowRef<readonly ChatMessage[]>>;
  status: Readonly<Ref<ChatStatus>>;
  error: Readonly<ShallowRef<ChatsockError | null>>;
  sessionId: Readonly<Ref<string | undefined>>;
  connection: Readonly<Ref<ConnectionStatus>>;
  send: (text: string, options?: SendOptions) => StreamHandle | undefined;
  stop: () => Promise<boolean>;
  retry: () => StreamHandle | undefined;
  /** A new reply to the last user message, in the place of the last reply (kept in its `versions`). */
  regenerate: (options?: RegenerateOptions) => StreamHandle | undefined;
  /** Opens another session (or a new chat, with undefined). */
  open: (sessionId: string | undefined) => Promise<void>;
  store: ChatStore;
  /** Closes the connection it made (called by itself when the component's scope ends). */
  close: () => void;
}

export function useChatsock(options: UseChatsockOptions = {}): UseChatsock {
  const { url = "", client, sessionId, provider, model, systemPrompt } = options;
  const store = new ChatStore({ sessionId, defaults: { provider, model, systemPrompt, reasoning: options.reasoning } });
  const own = client ?? connect(url, options);
  const state = store.getState();
  const messages = shallowRef(state.messages);
  const status = shallowRef(state.status);
  const error = shallowRef(state.error);
  const session = shallowRef(state.sessionId);
  const connection = shallowRef(state.connection);
  const unsubscribe = store.subscribe(() => {
    const next = store.getState();
    messages.value = next.messages;
    status.value = next.status;
    error.value = next.error;
    session.value = next.sessionId;
    connection.value = next.connection;
  });
  store.setClient(own);
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    unsubscribe();
    store.setClient(null);
    if (client === undefined) own.close();
  };
  if (getCurrentScope()) onScopeDispose(close);
  return {
    messages: readonly(messages),
    status: readonly(status),
    error: readonly(error),
    sessionId: readonly(session),
    connection: readonly(connection),
    send: store.send,
    stop: store.stop,
    retry: store.retry,
    regenerate: store.regenerate,
    open: (id) => store.open(id),
    store,
    close,
  };
}
