/** chatsock-client: a typed client for chatsock with automatic resume. */
import type { ChatClient, ConnectOptions } from "./client.js";
import { HttpClient } from "./http.js";
import { SocketClient } from "./socket.js";

export type {
  ChatClient,
  ClientEvents,
  ConnectOptions,
  ConnectionStatus,
  JoinOptions,
  JoinResult,
  RegenerateOptions,
  ResumeOptions,
  SendOptions,
  TokenSource,
  TransportName,
} from "./client.js";
export { ChatsockError, isChatsockError } from "./errors.js";
export type { ChatsockErrorInit } from "./errors.js";
export { HttpClient } from "./http.js";
export * from "./protocol.js";
export { SocketClient } from "./socket.js";
export { SseParser, formatEventId, parseEventId } from "./sse.js";
export type { EventPosition, SseEvent } from "./sse.js";
export { ChatStore } from "./store.js";
export type { ChatMessage, ChatMessageVersion, ChatState, ChatStatus, ChatStoreOptions } from "./store.js";
export { StreamHandle } from "./stream.js";
export type { StreamEvents, StreamStatus } from "./stream.js";

/**
 * Connects to a chatsock server. `url` is the server's origin (`""` or
 * omitted in a browser: the page's own). The default transport is Socket.IO
 * over WebSocket; `transport: "http"` uses fetch and SSE instead.
 */
export function connect(url = "", options: ConnectOptions = {}): ChatClient {
  if (options.transport === "http") return new HttpClient(url, options);
  return new SocketClient(url, options);
}
