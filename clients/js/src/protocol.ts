/**
 * The chatsock wire protocol as TypeScript types: every payload of
 * docs/protocol.md (Socket.IO) and docs/http.md (HTTP/SSE), which carry the
 * same JSON.
 */

/** Error codes a server sends in acks, `chat_stream_error`, HTTP errors and notices. */
export type ServerErrorCode =
  | "invalid_request"
  | "not_found"
  | "unauthorized"
  | "rate_limited"
  | "provider_unavailable"
  | "provider_error"
  | "timeout"
  | "too_many_streams"
  | "server_shutdown"
  | "server_draining"
  | "store_unavailable"
  | "worker_lost"
  | "internal"
  | "stream_lost"
  | "log_unavailable";

/**
 * Codes the client itself raises: `connection_lost` when a stream cannot be
 * followed any more (the transport gave up), `closed` when the client was
 * closed with streams in flight, `bad_response` for a reply that is not the
 * protocol (a proxy's HTML page, say).
 */
export type ClientErrorCode = "connection_lost" | "closed" | "bad_response";

export type ErrorCode = ServerErrorCode | ClientErrorCode;

/** Every server error code, for checks at run time. */
export const SERVER_ERROR_CODES: readonly ServerErrorCode[] = [
  "invalid_request",
  "not_found",
  "unauthorized",
  "rate_limited",
  "provider_unavailable",
  "provider_error",
  "timeout",
  "too_many_streams",
  "server_shutdown",
  "server_draining",
  "store_unavailable",
  "worker_lost",
  "internal",
  "stream_lost",
  "log_unavailable",
];

/** The `error` object of a failed ack or HTTP error body. */
export interface ErrorBody {
  code: ServerErrorCode;
  message: string;
  retry_after?: number;
  retryable?: boolean;
}

export interface ErrorAck {
  ok: false;
  error: ErrorBody;
}

export type Ack<T> = (T & { ok: true }) | ErrorAck;

export interface HistoryMessage {
  role: "user" | "assistant";
  content: string;
}

/** `chat_stream` (and the body of `POST /api/chat/stream`). */
export interface ChatStreamRequest {
  message: string;
  session_id?: string;
  system_prompt?: string;
  history?: HistoryMessage[];
  provider?: string;
  model?: string;
  temperature?: number;
  max_tokens?: number;
  client_message_id?: string;
  /** Also receive the model's reasoning (`chat_reasoning`) in this session. */
  reasoning?: boolean;
  /** Anthropic extended thinking, in tokens (1024 up to the server's limit); the demo provider reasons too. */
  thinking_budget?: number;
  /** OpenAI reasoning models. */
  reasoning_effort?: ReasoningEffort;
}

export type ReasoningEffort = "minimal" | "low" | "medium" | "high";

/**
 * `chat_regenerate` (and the body of `POST /api/chat/sessions/{id}/regenerate`,
 * where the session comes from the path): a new reply to the session's last
 * user message, replacing its reply.
 */
export interface ChatRegenerateRequest {
  session_id: string;
  /** The reply to replace: must be the session's last assistant message. */
  message_id?: string;
  client_message_id?: string;
  system_prompt?: string;
  provider?: string;
  model?: string;
  temperature?: number;
  max_tokens?: number;
  reasoning?: boolean;
  thinking_budget?: number;
  reasoning_effort?: ReasoningEffort;
}

export interface ChatStreamAck {
  ok: true;
  stream_id: string;
  session_id: string;
  message_id: string;
  epoch?: string;
  /** A regenerate's ack: the `message_id` of the reply it replaces. */
  regenerates?: string;
}

export interface ChatStopRequest {
  stream_id: string;
}

export interface ChatStopAck {
  ok: true;
  stopped: boolean;
}

export interface SessionJoinRequest {
  session_id: string;
  /** Also follow the session's reasoning; the messages then carry `reasoning`. */
  reasoning?: boolean;
  /** Also send the active reply's tokens after this seq, ahead of its end. */
  after?: number;
  after_reasoning?: number;
}

export type MessageStatus = "complete" | "stopped" | "error" | "streaming";

/** A stored message, as in `session_join` and `GET /api/chat/sessions/{id}`. */
export interface StoredMessage {
  message_id: string;
  role: "user" | "assistant";
  content: string;
  created_at: string;
  status: MessageStatus;
  stream_id: string | null;
  client_message_id: string | null;
  provider: string | null;
  model: string | null;
  error_code: ServerErrorCode | null;
  /** The model's reasoning, apart from `content`: only to a client that opted in. */
  reasoning?: string;
  /** Earlier replies this one replaced (regenerate), oldest first; absent when never regenerated. */
  versions?: MessageVersion[];
}

/** An earlier reply of a regenerated message. */
export interface MessageVersion {
  content: string;
  created_at: string;
  status: MessageStatus;
  stream_id: string | null;
  provider: string | null;
  model: string | null;
  error_code: ServerErrorCode | null;
  reasoning?: string;
}

export interface ActiveStream {
  stream_id: string;
  /** The reply's message_id: a stream that ended during the join is also in `messages`. */
  message_id?: string;
  seq: number;
  epoch?: string;
  /** The last `chat_reasoning` seq sent before the join (a join that opted in). */
  reasoning_seq?: number;
  /** The running stream is a regenerate of this message. */
  regenerates?: string;
}

export interface SessionJoinAck {
  ok: true;
  session_id: string;
  messages: StoredMessage[];
  active_stream: ActiveStream | null;
}

export interface ChatResumeRequest {
  stream_id: string;
  after?: number;
  epoch?: string;
  /** Also replay and follow the reasoning, after `after_reasoning`. */
  reasoning?: boolean;
  after_reasoning?: number;
}

export interface ChatResumeAck {
  ok: true;
  status: "streaming" | "complete" | "stopped" | "error";
}

export interface ChatStreamStart {
  stream_id: string;
  session_id: string;
  message_id: string;
  provider: string;
  model: string;
  regenerates?: string;
}

export interface ChatToken {
  stream_id: string;
  session_id: string;
  seq: number;
  token: string;
  count: number;
}

/** `chat_reasoning`: only to clients that opted in; `seq` runs 1, 2, 3... apart from `chat_token`'s. */
export interface ChatReasoning {
  stream_id: string;
  session_id: string;
  seq: number;
  reasoning: string;
}

export interface Usage {
  input_tokens?: number | null;
  output_tokens?: number | null;
  [key: string]: unknown;
}

export interface ChatComplete {
  stream_id: string;
  session_id: string;
  message_id: string;
  full_response: string;
  stopped: boolean;
  /** `stop`, `length`, `content_filter`, `tool_calls`, `stopped`; null when the provider gave none. */
  finish_reason: string | null;
  output_tokens: number | null;
  deltas: number;
  /** @deprecated the same number as `deltas`. */
  tokens: number;
  duration: number;
  tokens_per_second: number;
  provider: string | null;
  model: string | null;
  usage: Usage | null;
  persist_failed: boolean;
  timestamp: string;
  /** Only when the model reasoned: the reasoning's length, and ms from its first to its last delta. */
  reasoning_chars?: number;
  reasoning_ms?: number;
  /** The whole reasoning: only in the JSON reply (not SSE) of an HTTP request that opted in. */
  reasoning?: string;
  regenerates?: string;
}

export interface ChatStreamError {
  stream_id: string;
  session_id: string;
  code: ServerErrorCode;
  error: string;
  partial: string;
  retryable: boolean;
  regenerates?: string;
}

export interface SessionDeleted {
  session_id: string;
}

/** `auth_expired`: the token expired; the socket is disconnected next. */
export interface AuthExpired {
  code: "unauthorized";
  reason: string;
}

/** `server_draining`: the worker is leaving; reconnect (elsewhere) and resume. */
export interface ServerDraining {
  code: "server_draining";
  reason: string;
  reconnect: boolean;
}

/** Events the server sends, with their payloads. */
export interface ServerToClientEvents {
  chat_stream_start: (payload: ChatStreamStart) => void;
  chat_token: (payload: ChatToken) => void;
  chat_reasoning: (payload: ChatReasoning) => void;
  chat_complete: (payload: ChatComplete) => void;
  chat_stream_error: (payload: ChatStreamError) => void;
  session_deleted: (payload: SessionDeleted) => void;
  auth_expired: (payload: AuthExpired) => void;
  server_draining: (payload: ServerDraining) => void;
}

/** Events a client sends, with their payloads and acks. */
export interface ClientToServerEvents {
  chat_stream: (payload: ChatStreamRequest, ack: (reply: Ack<ChatStreamAck>) => void) => void;
  chat_regenerate: (payload: ChatRegenerateRequest, ack: (reply: Ack<ChatStreamAck>) => void) => void;
  chat_stop: (payload: ChatStopRequest, ack: (reply: Ack<ChatStopAck>) => void) => void;
  session_join: (payload: SessionJoinRequest, ack: (reply: Ack<SessionJoinAck>) => void) => void;
  chat_resume: (payload: ChatResumeRequest, ack: (reply: Ack<ChatResumeAck>) => void) => void;
}

/** One row of `GET /api/chat/sessions`. */
export interface SessionSummary {
  session_id: string;
  created_at: string;
  updated_at: string;
  message_count: number;
  title: string;
}

/** `GET /api/chat/sessions/{id}`. */
export interface SessionDetail {
  session_id: string;
  created_at: string;
  messages: StoredMessage[];
  active_stream: ActiveStream | null;
}

/** One row of `GET /api/chat/stream/active`. */
export interface StreamSummary {
  stream_id: string;
  session_id: string;
  started_at: string;
  seq: number;
  epoch?: string;
  provider: string | null;
  model: string | null;
}
