/** The one error type the client raises, carrying the protocol's error code. */
import type { ChatStreamError, ErrorBody, ErrorCode } from "./protocol.js";

const RETRYABLE: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  "server_shutdown",
  "server_draining",
  "store_unavailable",
  "connection_lost",
]);

export interface ChatsockErrorInit {
  code: ErrorCode;
  message: string;
  retryable?: boolean;
  retryAfter?: number;
  partial?: string;
  streamId?: string;
  sessionId?: string;
  status?: number;
}

/**
 * A refused request, a failed stream or a lost connection. `partial` is the
 * text the stream had sent before it failed (`chat_stream_error.partial`).
 */
export class ChatsockError extends Error {
  readonly code: ErrorCode;
  readonly retryable: boolean;
  readonly retryAfter: number | undefined;
  readonly partial: string;
  readonly streamId: string | undefined;
  readonly sessionId: string | undefined;
  /** The HTTP status, for errors of the HTTP API. */
  readonly status: number | undefined;

  constructor(init: ChatsockErrorInit) {
    super(`${init.code}: ${init.message}`);
    this.name = "ChatsockError";
    this.code = init.code;
    this.retryAfter = init.retryAfter;
    this.retryable = init.retryable ?? (init.retryAfter !== undefined || RETRYABLE.has(init.code));
    this.partial = init.partial ?? "";
    this.streamId = init.streamId;
    this.sessionId = init.sessionId;
    this.status = init.status;
  }

  /** From a failed ack's or an HTTP error body's `error`. */
  static fromBody(body: ErrorBody, extra: Partial<ChatsockErrorInit> = {}): ChatsockError {
    return new ChatsockError({
      code: body.code,
      message: body.message,
      retryable: body.retryable,
      retryAfter: body.retry_after,
      ...extra,
    });
  }

  /** From a `chat_stream_error` event. */
  static fromStreamError(event: ChatStreamError): ChatsockError {
    return new ChatsockError({
      code: event.code,
      message: event.error,
      retryable: event.retryable,
      partial: event.partial,
      streamId: event.stream_id,
      sessionId: event.session_id,
    });
  }
}

export function isChatsockError(value: unknown): value is ChatsockError {
  return value instanceof ChatsockError;
}
