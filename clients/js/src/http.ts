/**
 * The `http` transport: `fetch` and Server-Sent Events, for places without
 * WebSockets. A dropped response is resumed with `GET /api/chat/stream/{id}`
 * and `Last-Event-ID` (`<seq>.<reasoning seq>` for a handle that follows the
 * reasoning); a POST whose response never started is sent again with the
 * same `client_message_id`, which replays instead of starting anew.
 */
import {
  type ChatClient,
  ClientBase,
  type ConnectOptions,
  type ConnectionStatus,
  type JoinOptions,
  type JoinResult,
  type RegenerateOptions,
  type ResumeOptions,
  type SendOptions,
  readJson,
  regenerateBody,
  requestBody,
} from "./client.js";
import { ChatsockError } from "./errors.js";
import type {
  ChatComplete,
  ChatReasoning,
  ChatStopAck,
  ChatStreamError,
  ChatStreamStart,
  ChatToken,
} from "./protocol.js";
import { SseParser, formatEventId } from "./sse.js";
import { StreamHandle } from "./stream.js";

/** Attempts in a row without progress before a stream fails with `connection_lost`. */
const ATTEMPTS = 6;

/** A POST that starts a stream (`chat_stream` or a regenerate), sent again until it answers. */
interface Start {
  path: string;
  body: object;
}

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
    handle.withReasoning = this.wantsReasoning(options.reasoning);
    const body = requestBody(message, { ...options, reasoning: handle.withReasoning });
    void this.run(handle, { path: "/api/chat/stream", body });
    return handle;
  }

  regenerate(sessionId: string, options: RegenerateOptions = {}): StreamHandle {
    const handle = new StreamHandle((id) => this.stop(id));
    this.track(handle);
    handle.withReasoning = this.wantsReasoning(options.reasoning);
    // The session is the path's.
    const { session_id: _, ...body } = regenerateBody(sessionId, { ...options, reasoning: handle.withReasoning });
    void this.run(handle, { path: `/api/chat/sessions/${encodeURIComponent(sessionId)}/regenerate`, body });
    return handle;
  }

  resume(streamId: string, after = 0, options: ResumeOptions = {}): StreamHandle {
    const handle = new StreamHandle((id) => this.stop(id));
    this.track(handle);
    handle.lastSeq = after;
    handle.withReasoning = this.wantsReasoning(options.reasoning);
    handle.lastReasoningSeq = options.afterReasoning ?? 0;
    handle.accept({ stream_id: streamId, session_id: options.sessionId ?? "", epoch: options.epoch });
    void this.run(handle, undefined);
    return handle;
  }

  async stop(streamId: string): Promise<boolean> {
    const reply = await this.api<ChatStopAck>("POST", "/api/chat/stream/stop", { stream_id: streamId });
    return reply.stopped;
  }

  async join(sessionId: string, options: JoinOptions = {}): Promise<JoinResult> {
    const reasoning = this.wantsReasoning(options.reasoning);
    const detail = await this.history(sessionId, { reasoning });
    const running = detail.active_stream;
    let active: StreamHandle | null = null;
    if (running !== null) {
      active = this.streams.get(running.stream_id) ?? null;
      if (active === null) {
        active = this.resume(running.stream_id, 0, { sessionId, epoch: running.epoch, reasoning });
        if (running.regenerates !== undefined) active.regenerates = running.regenerates;
        if (running.message_id !== undefined) active.messageId = running.message_id;
      }
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
  private async run(handle: StreamHandle, start: Start | undefined): Promise<void> {
    let failures = 0;
    for (;;) {
      const before = handle.lastSeq + handle.lastReasoningSeq;
      try {
        if (handle.streamId === undefined && start !== undefined) await this.post(handle, start);
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
        failures = handle.lastSeq + handle.lastReasoningSeq > before ? 1 : failures + 1;
        if (!retry || failures >= ATTEMPTS) {
          handle.fail(failure);
          return;
        }
        await sleep(Math.min(200 * 2 ** (failures - 1), 3000), this.abort.signal);
      }
    }
  }

  private async post(handle: StreamHandle, start: Start): Promise<void> {
    const extra: Record<string, string> = {
      "Content-Type": "application/json",
      Accept: "text/event-stream",
    };
    // A repeated POST replays the same stream: after what the handle holds.
    if (handle.lastSeq > 0 || handle.lastReasoningSeq > 0) extra["Last-Event-ID"] = lastEventId(handle);
    const response = await this.request(`${this.apiUrl}${start.path}`, {
      method: "POST",
      headers: await this.headers(extra),
      body: JSON.stringify(start.body),
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
    if (handle.withReasoning) {
      query.set("reasoning", "1");
      query.set("after_reasoning", String(handle.lastReasoningSeq));
    }
    if (handle.epoch !== undefined) query.set("epoch", handle.epoch);
    const response = await this.request(
      `${this.apiUrl}/api/chat/stream/${encodeURIComponent(streamId)}?${query}`,
      {
        method: "GET",
        headers: await this.headers({
          Accept: "text/event-stream",
          "Last-Event-ID": lastEventId(handle),
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
          else if (event.event === "chat_reasoning") handle.addReasoning(payload as ChatReasoning);
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

/** Where the handle is, as an SSE id: `<seq>`, or `<seq>.<reasoning seq>` when it follows the reasoning. */
function lastEventId(handle: StreamHandle): string {
  return formatEventId(handle.lastSeq, handle.withReasoning ? handle.lastReasoningSeq : undefined);
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
