/**
 * What every transport offers (`ChatClient`), and the HTTP API calls they
 * share: sessions, history, delete, stop.
 */
import { Emitter } from "./emitter.js";
import { ChatsockError } from "./errors.js";
import type {
  ChatRegenerateRequest,
  ChatStreamRequest,
  ErrorBody,
  ErrorCode,
  HistoryMessage,
  ReasoningEffort,
  ServerDraining,
  SessionDeleted,
  SessionDetail,
  SessionSummary,
  StoredMessage,
  AuthExpired,
} from "./protocol.js";
import type { StreamHandle } from "./stream.js";

/** A token, or a function that returns the current one (called on every (re)connect and request). */
export type TokenSource = string | (() => string | Promise<string>);

export type TransportName = "websocket" | "polling" | "http";

export interface ConnectOptions {
  /** The JWT for `auth.mode = "jwt"`: sent in the Socket.IO `auth` payload and as `Authorization: Bearer`. */
  token?: TokenSource;
  /**
   * `"websocket"` (default: WebSocket only), `"polling"` (long-polling, upgraded to
   * WebSocket when possible) or `"http"` (fetch and SSE, no Socket.IO).
   */
  transport?: TransportName;
  /** Where the HTTP API is, when not at `url` (e.g. `""` for the page's own origin). */
  apiUrl?: string;
  /** A fetch to use (defaults to the global one). */
  fetch?: typeof fetch;
  /**
   * Called before each reconnection attempt; return a URL to reconnect to
   * another server (a client-side failover list), or undefined to keep it.
   */
  nextUrl?: (attempt: number) => string | undefined;
  /** Timeout of one request's acknowledgement, ms (default 15000). */
  ackTimeoutMs?: number;
  /** Extra socket.io-client options (`reconnectionDelay`, `path`, ...). */
  socketOptions?: Record<string, unknown>;
  /**
   * Receive the model's reasoning (default false): the default of every
   * send, regenerate, join and history (each can say otherwise).
   */
  reasoning?: boolean;
}

export interface SendOptions {
  sessionId?: string;
  provider?: string;
  model?: string;
  systemPrompt?: string;
  history?: HistoryMessage[];
  temperature?: number;
  maxTokens?: number;
  /** Makes the request idempotent within the session; one is made when absent. */
  clientMessageId?: string;
  /** Receive the model's reasoning (handle `reasoning` events); defaults to the client's `reasoning`. */
  reasoning?: boolean;
  /** Ask the model to reason: Anthropic extended thinking, in tokens (1024 or more). */
  thinkingBudget?: number;
  /** Ask an OpenAI reasoning model to reason this much. */
  reasoningEffort?: ReasoningEffort;
}

/** A regenerate: `chat_stream`'s generation options, and which reply it replaces. */
export interface RegenerateOptions extends Omit<SendOptions, "sessionId" | "history"> {
  /** The reply to replace; it must be the session's last assistant message (the server checks). */
  messageId?: string;
}

export interface ResumeOptions {
  sessionId?: string;
  epoch?: string;
  /** Follow the reasoning too (defaults to the client's `reasoning`), after `afterReasoning`. */
  reasoning?: boolean;
  afterReasoning?: number;
}

export interface JoinOptions {
  /** Follow the session's reasoning too; the messages then carry `reasoning` (defaults to the client's). */
  reasoning?: boolean;
}

export interface JoinResult {
  sessionId: string;
  messages: StoredMessage[];
  /** The reply still being written in the session, followed from its first token. */
  active: StreamHandle | null;
}

export type ConnectionStatus = "connecting" | "connected" | "reconnecting" | "disconnected";

export interface ClientEvents {
  /** A stream started by someone else in a session this client joined. */
  stream: (handle: StreamHandle) => void;
  session_deleted: (event: SessionDeleted) => void;
  /** The worker is draining: the client reconnects and resumes by itself. */
  draining: (event: ServerDraining) => void;
  /** The token expired: give a fresh one (a `token` function) and the client reconnects. */
  auth_expired: (event: AuthExpired) => void;
  connection: (status: ConnectionStatus) => void;
}

/** The client, whichever transport carries it. */
export interface ChatClient {
  readonly transport: TransportName;
  readonly connection: ConnectionStatus;
  /** Starts a reply to `message`; follow it on the handle. */
  send(message: string, options?: SendOptions): StreamHandle;
  /**
   * A new reply to the session's last user message, replacing its reply (the
   * old one is kept in the message's `versions`). Idempotent by
   * `clientMessageId` (one is made when absent), as send() is.
   */
  regenerate(sessionId: string, options?: RegenerateOptions): StreamHandle;
  /** Stops a stream wherever it runs; `true` when this request stopped it. */
  stop(streamId: string): Promise<boolean>;
  /** Follows a stream from after `after` (e.g. after a page reload). */
  resume(streamId: string, after?: number, options?: ResumeOptions): StreamHandle;
  /** Loads a session and follows its reply in flight (a second tab). */
  join(sessionId: string, options?: JoinOptions): Promise<JoinResult>;
  sessions(options?: { limit?: number }): Promise<SessionSummary[]>;
  history(sessionId: string, options?: JoinOptions): Promise<SessionDetail>;
  deleteSession(sessionId: string): Promise<void>;
  on<K extends keyof ClientEvents>(event: K, listener: ClientEvents[K]): () => void;
  off<K extends keyof ClientEvents>(event: K, listener: ClientEvents[K]): void;
  /** Closes the connection; streams still followed fail with `closed`. */
  close(): void;
}

export async function resolveToken(token: TokenSource | undefined): Promise<string | undefined> {
  if (token === undefined) return undefined;
  return typeof token === "function" ? token() : token;
}

export function newClientMessageId(): string {
  return globalThis.crypto.randomUUID();
}

/** A session id made by the client, so that a retried first request lands in the same session. */
export function newSessionId(): string {
  return `ses_${globalThis.crypto.randomUUID().replaceAll("-", "")}`;
}

/** The `chat_stream` payload; ids are filled in so that sending it again is idempotent. */
export function requestBody(message: string, options: SendOptions): ChatStreamRequest {
  const body: Record<string, unknown> = { message };
  options = {
    ...options,
    sessionId: options.sessionId ?? newSessionId(),
    clientMessageId: options.clientMessageId ?? newClientMessageId(),
  };
  const fields: [string, unknown][] = [
    ["session_id", options.sessionId],
    ["history", options.history],
    ...generationFields(options),
  ];
  for (const [name, value] of fields) if (value !== undefined) body[name] = value;
  return body as unknown as ChatStreamRequest;
}

/** The `chat_regenerate` payload, its client_message_id filled in (idempotent when sent again). */
export function regenerateBody(sessionId: string, options: RegenerateOptions): ChatRegenerateRequest {
  const body: Record<string, unknown> = { session_id: sessionId };
  options = { ...options, clientMessageId: options.clientMessageId ?? newClientMessageId() };
  const fields: [string, unknown][] = [["message_id", options.messageId], ...generationFields(options)];
  for (const [name, value] of fields) if (value !== undefined) body[name] = value;
  return body as unknown as ChatRegenerateRequest;
}

function generationFields(options: SendOptions): [string, unknown][] {
  return [
    ["provider", options.provider],
    ["model", options.model],
    ["system_prompt", options.systemPrompt],
    ["temperature", options.temperature],
    ["max_tokens", options.maxTokens],
    ["client_message_id", options.clientMessageId],
    ["reasoning", options.reasoning || undefined],
    ["thinking_budget", options.thinkingBudget],
    ["reasoning_effort", options.reasoningEffort],
  ];
}

/** The HTTP API calls both transports make, and the client bookkeeping. */
export abstract class ClientBase extends Emitter<ClientEvents> {
  protected readonly apiUrl: string;
  protected readonly fetcher: typeof fetch;
  protected readonly streams = new Map<string, StreamHandle>();
  protected closed = false;

  constructor(
    url: string,
    protected readonly options: ConnectOptions,
  ) {
    super();
    this.apiUrl = (options.apiUrl ?? url).replace(/\/+$/, "");
    const fetcher = options.fetch ?? globalThis.fetch;
    this.fetcher = (input, init) => fetcher(input, init);
  }

  async sessions(options: { limit?: number } = {}): Promise<SessionSummary[]> {
    const query = options.limit === undefined ? "" : `?limit=${options.limit}`;
    const body = await this.api<{ sessions: SessionSummary[] }>("GET", `/api/chat/sessions${query}`);
    return body.sessions;
  }

  history(sessionId: string, options: JoinOptions = {}): Promise<SessionDetail> {
    const query = this.wantsReasoning(options.reasoning) ? "?reasoning=1" : "";
    return this.api<SessionDetail>("GET", `/api/chat/sessions/${encodeURIComponent(sessionId)}${query}`);
  }

  /** A request's own `reasoning`, else the client's default. */
  protected wantsReasoning(asked: boolean | undefined): boolean {
    return asked ?? this.options.reasoning ?? false;
  }

  async deleteSession(sessionId: string): Promise<void> {
    await this.api("DELETE", `/api/chat/sessions/${encodeURIComponent(sessionId)}`);
  }

  protected async headers(extra: Record<string, string> = {}): Promise<Record<string, string>> {
    const headers: Record<string, string> = { ...extra };
    const token = await resolveToken(this.options.token);
    if (token) headers.Authorization = `Bearer ${token}`;
    return headers;
  }

  /** One JSON request to the HTTP API; a ChatsockError for an error reply. */
  protected async api<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers = await this.headers(
      body === undefined ? { Accept: "application/json" } : { "Content-Type": "application/json" },
    );
    let response: Response;
    try {
      response = await this.fetcher(`${this.apiUrl}${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (error) {
      throw new ChatsockError({ code: "connection_lost", message: String(error) });
    }
    return (await readJson(response)) as T;
  }

  protected track(handle: StreamHandle): void {
    handle.on("accepted", () => {
      if (handle.streamId === undefined || handle.ended) return;
      // A second handle of one stream (a repeated client_message_id) mirrors the first.
      const first = this.streams.get(handle.streamId);
      if (first === undefined || first.ended) this.streams.set(handle.streamId, handle);
    });
    const forget = () => {
      if (handle.streamId !== undefined && this.streams.get(handle.streamId) === handle) {
        this.streams.delete(handle.streamId);
      }
    };
    handle.done.then(forget, forget);
  }

  protected failAll(code: ErrorCode, message: string): void {
    for (const handle of [...this.streams.values()]) {
      handle.fail(new ChatsockError({ code, message, partial: handle.text, streamId: handle.streamId }));
    }
    this.streams.clear();
  }
}

/** The JSON of a reply; a ChatsockError with its code for an error status. */
export async function readJson(response: Response): Promise<unknown> {
  const text = await response.text();
  let parsed: unknown;
  try {
    parsed = text === "" ? {} : JSON.parse(text);
  } catch {
    throw new ChatsockError({
      code: "bad_response",
      message: `HTTP ${response.status}: not JSON`,
      status: response.status,
    });
  }
  if (!response.ok) {
    const body = parsed as { error?: ErrorBody; partial?: string; stream_id?: string };
    if (body.error?.code !== undefined) {
      throw ChatsockError.fromBody(body.error, {
        status: response.status,
        partial: body.partial,
        streamId: body.stream_id,
      });
    }
    throw new ChatsockError({
      code: "bad_response",
      message: `HTTP ${response.status}`,
      status: response.status,
    });
  }
  return parsed;
}
