/**
 * The `http` transport: `fetch` and Server-Sent Events, for places without
 * WebSockets. A dropped response is resumed with `GET /api/chat/stream/{id}`
 * and `Last-Event-ID`; a POST whose response never started is sent again
 * with the same `client_message_id`, which replays instead of starting anew.
 */
import {
  type ChatClient,
  ClientBase,
  type ConnectOptions,
  type ConnectionStatus,
  type JoinResult,
  type ResumeOptions,
  type SendOptions,
  readJson,
  requestBody,
} from "./client.js";
import { ChatsockError } from "./errors.js";
import type {
  ChatComplete,
  ChatStopAck,
  ChatStreamError,
  ChatStreamRequest,
  ChatStreamStart,
  ChatToken,
} from "./protocol.js";
import { SseParser } from "./sse.js";
import { StreamHandle } from "./stream.js";

/** Attempts in a row without progress before a stream fails with `connection_lost`. */
const ATTEMPTS = 6;

export class HttpClient extends ClientBase implements ChatClient {
  readonly transport = "http" as const;
  readonly connection: ConnectionStatus = "connected";
  private readonly abort = new AbortController();

  constructor(url: string, options: ConnectOptions = {}) {
    super(url, options);
  }

  send(message: string, options: SendOptions = {}): StreamHandle {
    const handle = new StreamHandle((id) => this.stop(id));
    this.track(handle);
    const body = requestBody(message, options);
    void this.run(handle, body);
    return handle;
  }

  resume(streamId: string, after = 0, options: ResumeOptions = {}): StreamHandle {
    const handle = new StreamHandle((id) => this.stop(id));
    this.track(handle);
    handle.lastSeq = after;
    handle.accept({ stream_id: streamId, session_id: options.sessionId ?? "", epoch: options.epoch });
    void this.run(handle, undefined);
    return handle;
  }

  async stop(streamId: string): Promise<boolean> {
    const reply = await this.api<ChatStopAck>("POST", "/api/chat/stream/stop", { stream_id: streamId });
    return reply.stopped;
  }

  async join(sessionId: string): Promise<JoinResult> {
    const detail = await this.history(sessionId);
    const running = detail.active_stream;
    let active: StreamHandle | null = null;
    if (running !== null) {
      active =
        this.streams.get(running.stream_id) ??
        this.resume(running.stream_id, 0, { sessionId, epoch: running.epoch });
    }
    return { sessionId, messages: detail.messages, active };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.abort.abort();
    this.failAll("closed", "the client was closed");
  }

  /** Starts (when `body` is given) or follows the stream until its end, resuming after drops. */
  private async run(handle: StreamHandle, body: ChatStreamRequest | undefined): Promise<void> {
    let failures = 0;
    for (;;) {
      const before = handle.lastSeq;
      try {
        if (handle.streamId === undefined && body !== undefined) await this.post(handle, body);
        else await this.follow(handle);
        return;
      } catch (error) {
        if (handle.ended) return;
        if (this.closed) {
          handle.fail(new ChatsockError({ code: "closed", message: "the client was closed", partial: handle.text }));
          return;
        }
        const failure = asError(error, handle);
        // A draining worker refuses new streams; the load balancer sends the retry elsewhere.
        const retry = failure.code === "connection_lost" || failure.code === "server_shutdown";
        failures = handle.lastSeq > before ? 1 : failures + 1;
        if (!retry || failures >= ATTEMPTS) {
          handle.fail(failure);
          return;
        }
        await sleep(Math.min(200 * 2 ** (failures - 1), 3000), this.abort.signal);
      }
    }
  }

  private async post(handle: StreamHandle, body: ChatStreamRequest): Promise<void> {
    const extra: Record<string, string> = {
      "Content-Type": "application/json",
      Accept: "text/event-stream",
    };
    if (handle.lastSeq > 0) extra["Last-Event-ID"] = String(handle.lastSeq);
    const response = await this.request(`${this.apiUrl}/api/chat/stream`, {
      method: "POST",
      headers: await this.headers(extra),
      body: JSON.stringify(body),
    });
    const streamId = response.headers.get("X-Stream-Id");
    const sessionId = response.headers.get("X-Session-Id");
    if (streamId !== null && sessionId !== null) {
      handle.accept({
        stream_id: streamId,
        session_id: sessionId,
        message_id: response.headers.get("X-Message-Id") ?? undefined,
      });
    }
    await this.read(handle, response);
  }

  private async follow(handle: StreamHandle): Promise<void> {
    const streamId = handle.streamId as string;
    const query = new URLSearchParams({ after: String(handle.lastSeq) });
    if (handle.epoch !== undefined) query.set("epoch", handle.epoch);
    const response = await this.request(
      `${this.apiUrl}/api/chat/stream/${encodeURIComponent(streamId)}?${query}`,
      {
        method: "GET",
        headers: await this.headers({
          Accept: "text/event-stream",
          "Last-Event-ID": String(handle.lastSeq),
        }),
      },
    );
    await this.read(handle, response);
  }

  private async request(url: string, init: RequestInit): Promise<Response> {
    let response: Response;
    try {
      response = await this.fetcher(url, { ...init, signal: this.abort.signal });
    } catch (error) {
      throw new ChatsockError({ code: "connection_lost", message: String(error) });
    }
    if (!response.ok) await readJson(response); // throws the error it carries
    if (!(response.headers.get("Content-Type") ?? "").startsWith("text/event-stream")) {
      await response.body?.cancel();
      throw new ChatsockError({ code: "bad_response", message: "not an event stream", status: response.status });
    }
    return response;
  }

  /** Feeds the SSE body to the handle until its terminal event. */
  private async read(handle: StreamHandle, response: Response): Promise<void> {
    if (response.body === null) throw new ChatsockError({ code: "bad_response", message: "no body" });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const parser = new SseParser();
    try {
      for (;;) {
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          chunk = await reader.read();
        } catch (error) {
          throw new ChatsockError({ code: "connection_lost", message: String(error), partial: handle.text });
        }
        if (chunk.done) break;
        for (const event of parser.feed(decoder.decode(chunk.value, { stream: true }))) {
          const payload: unknown = JSON.parse(event.data);
          if (!handle.sessionId) handle.sessionId = (payload as { session_id: string }).session_id;
          if (event.event === "chat_stream_start") handle.start(payload as ChatStreamStart);
          else if (event.event === "chat_token") handle.token(payload as ChatToken);
          else if (event.event === "chat_complete") handle.complete(payload as ChatComplete);
          else if (event.event === "chat_stream_error") {
            handle.fail(ChatsockError.fromStreamError(payload as ChatStreamError));
          }
          if (handle.ended) return;
        }
      }
    } finally {
      reader.cancel().catch(() => undefined);
    }
    throw new ChatsockError({ code: "connection_lost", message: "the response ended early", partial: handle.text });
  }
}

function asError(error: unknown, handle: StreamHandle): ChatsockError {
  if (error instanceof ChatsockError) return error;
  return new ChatsockError({ code: "connection_lost", message: String(error), partial: handle.text });
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}
