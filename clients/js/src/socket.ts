/**
 * The Socket.IO transport: socket.io-client with automatic resume. After
 * every reconnect (a network blip, `server_draining`, a new token) each
 * stream in flight is resumed with `chat_resume` after its last seq (and its
 * last reasoning seq, opted in), and each joined session is joined again.
 */
import { io, type Socket } from "socket.io-client";

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
  regenerateBody,
  requestBody,
  resolveToken,
} from "./client.js";
import { ChatsockError } from "./errors.js";
import type {
  Ack,
  ChatComplete,
  ChatReasoning,
  ChatRegenerateRequest,
  ChatResumeRequest,
  ChatStreamAck,
  ChatStreamError,
  ChatStreamRequest,
  ChatStreamStart,
  ChatToken,
  ClientToServerEvents,
  ServerToClientEvents,
} from "./protocol.js";
import { StreamHandle } from "./stream.js";

type StreamEvent =
  | ["chat_stream_start", ChatStreamStart]
  | ["chat_token", ChatToken]
  | ["chat_reasoning", ChatReasoning]
  | ["chat_complete", ChatComplete]
  | ["chat_stream_error", ChatStreamError];

/** How many times a `chat_stream` whose ack was lost is sent again (same client_message_id). */
const SEND_ATTEMPTS = 5;

export class SocketClient extends ClientBase implements ChatClient {
  readonly transport: "websocket" | "polling";
  /** The underlying socket.io-client socket (its Manager is `socket.io`). */
  readonly socket: Socket<ServerToClientEvents, ClientToServerEvents>;
  connection: ConnectionStatus = "connecting";

  /** Joined sessions, and whether this socket follows their reasoning. */
  private readonly joined = new Map<string, boolean>();
  /** Events of streams not known yet, while a send's or join's ack is on its way. */
  private orphans: StreamEvent[] = [];
  private waitingAcks = 0;
  private connects = 0;
  private draining = false;
  private authExpired = false;
  private readonly waiters = new Set<{ resolve: () => void; reject: (e: ChatsockError) => void }>();

  constructor(url: string, options: ConnectOptions = {}) {
    super(url, options);
    this.transport = options.transport === "polling" ? "polling" : "websocket";
    this.socket = io(url, {
      transports: this.transport === "polling" ? ["polling", "websocket"] : ["websocket"],
      auth: (cb) => {
        resolveToken(options.token).then(
          (token) => cb(token ? { token } : {}),
          () => cb({}),
        );
      },
      reconnectionDelay: 250,
      reconnectionDelayMax: 5000,
      ...options.socketOptions,
    });
    const socket = this.socket;
    socket.on("chat_stream_start", (e) => this.route(["chat_stream_start", e]));
    socket.on("chat_token", (e) => this.route(["chat_token", e]));
    socket.on("chat_reasoning", (e) => this.route(["chat_reasoning", e]));
    socket.on("chat_complete", (e) => this.route(["chat_complete", e]));
    socket.on("chat_stream_error", (e) => this.route(["chat_stream_error", e]));
    socket.on("connect", () => this.onConnect());
    socket.on("disconnect", (reason) => this.onDisconnect(reason));
    socket.on("connect_error", (error) => this.onConnectError(error));
    socket.on("server_draining", (event) => {
      this.draining = true;
      this.emit("draining", event);
    });
    socket.on("auth_expired", (event) => {
      this.authExpired = true;
      this.emit("auth_expired", event);
    });
    socket.on("session_deleted", (event) => {
      this.joined.delete(event.session_id);
      this.emit("session_deleted", event);
      // Its replies were stopped first; one whose end has not reached this socket
      // gets it (or not_found) from a resume instead of waiting for ever.
      for (const handle of this.streams.values()) {
        if (handle.sessionId === event.session_id && !handle.ended) {
          void this.sendResume(handle);
        }
      }
    });
    socket.io.on("reconnect_attempt", (attempt) => {
      const next = options.nextUrl?.(attempt);
      // The Manager opens each new Engine.IO connection on its `uri`.
      if (next !== undefined) (socket.io as unknown as { uri: string }).uri = next;
    });
  }

  send(message: string, options: SendOptions = {}): StreamHandle {
    const handle = new StreamHandle((id) => this.stop(id));
    this.track(handle);
    handle.withReasoning = this.wantsReasoning(options.reasoning);
    const body = requestBody(message, { ...options, reasoning: handle.withReasoning });
    void this.start(handle, ["chat_stream", body], options.clientMessageId !== undefined);
    return handle;
  }

  regenerate(sessionId: string, options: RegenerateOptions = {}): StreamHandle {
    const handle = new StreamHandle((id) => this.stop(id));
    this.track(handle);
    handle.withReasoning = this.wantsReasoning(options.reasoning);
    const body = regenerateBody(sessionId, { ...options, reasoning: handle.withReasoning });
    void this.start(handle, ["chat_regenerate", body], options.clientMessageId !== undefined);
    return handle;
  }

  async stop(streamId: string): Promise<boolean> {
    await this.connected();
    const reply = await this.socket
      .timeout(this.ackTimeout)
      .emitWithAck("chat_stop", { stream_id: streamId });
    if (!reply.ok) throw ChatsockError.fromBody(reply.error, { streamId });
    return reply.stopped;
  }

  resume(streamId: string, after = 0, options: ResumeOptions = {}): StreamHandle {
    const handle = new StreamHandle((id) => this.stop(id));
    this.track(handle);
    handle.lastSeq = after;
    handle.withReasoning = this.wantsReasoning(options.reasoning);
    handle.lastReasoningSeq = options.afterReasoning ?? 0;
    handle.accept({ stream_id: streamId, session_id: options.sessionId ?? "", epoch: options.epoch });
    void this.sendResume(handle);
    return handle;
  }

  join(sessionId: string, options: JoinOptions = {}): Promise<JoinResult> {
    return this.joinSession(sessionId, false, this.wantsReasoning(options.reasoning));
  }

  /** `announce`: a reply found running is also given to `stream` listeners (a rejoin). */
  private async joinSession(sessionId: string, announce: boolean, reasoning: boolean): Promise<JoinResult> {
    this.joined.set(sessionId, reasoning || (this.joined.get(sessionId) ?? false));
    this.waitingAcks += 1;
    let reply;
    try {
      await this.connected();
      reply = await this.socket
        .timeout(this.ackTimeout)
        // `after: 0`: a reply in flight comes whole with the join, ahead of its end.
        .emitWithAck("session_join", { session_id: sessionId, after: 0, ...(reasoning ? { reasoning } : {}) });
    } catch (error) {
      this.joined.delete(sessionId);
      throw toError(error);
    } finally {
      this.waitingAcks -= 1;
    }
    if (!reply.ok) {
      this.joined.delete(sessionId);
      this.releaseOrphans();
      throw ChatsockError.fromBody(reply.error, { sessionId });
    }
    let active: StreamHandle | null = null;
    const running = reply.active_stream;
    if (running !== null) {
      active = this.streams.get(running.stream_id) ?? null;
      if (active === null) {
        active = this.follow(
          running.stream_id,
          sessionId,
          running.epoch,
          reasoning,
          running.regenerates,
          running.message_id,
        );
        if (announce) this.emit("stream", active);
      } else if (reasoning && !active.withReasoning) {
        // Followed without reasoning until now: the resume fills its reasoning from seq 1.
        active.withReasoning = true;
        void this.sendResume(active);
      }
    }
    this.releaseOrphans();
    return { sessionId, messages: reply.messages, active };
  }

  /** Connects again after the server disconnected this client (e.g. `auth_expired` with a static token). */
  reconnect(): void {
    if (!this.closed && !this.socket.connected) this.socket.connect();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.disconnect();
    this.setConnection("disconnected");
    const error = new ChatsockError({ code: "closed", message: "the client was closed" });
    for (const waiter of this.waiters) waiter.reject(error);
    this.waiters.clear();
    this.failAll("closed", "the client was closed");
  }

  private get ackTimeout(): number {
    return this.options.ackTimeoutMs ?? 15000;
  }

  /**
   * Sends `chat_stream` or `chat_regenerate` until acknowledged. `repeatable`: the
   * caller chose the client_message_id, so even a first ack may be an earlier
   * request's stream, whose tokens so far this socket never had.
   */
  private async start(
    handle: StreamHandle,
    [event, body]: ["chat_stream", ChatStreamRequest] | ["chat_regenerate", ChatRegenerateRequest],
    repeatable: boolean,
  ): Promise<void> {
    this.waitingAcks += 1;
    try {
      for (let attempt = 1; ; attempt++) {
        let reply: Ack<ChatStreamAck>;
        try {
          await this.connected();
          const socket = this.socket.timeout(this.ackTimeout);
          reply = event === "chat_stream"
            ? await socket.emitWithAck("chat_stream", body as ChatStreamRequest)
            : await socket.emitWithAck("chat_regenerate", body as ChatRegenerateRequest);
        } catch (error) {
          // A lost ack: the same client_message_id makes sending it again safe.
          if (!this.closed && attempt < SEND_ATTEMPTS) continue;
          handle.fail(toError(error));
          return;
        }
        if (!reply.ok) {
          handle.fail(ChatsockError.fromBody(reply.error));
          return;
        }
        // The socket is in the session's room now: follow the session's other replies too.
        this.joined.set(reply.session_id, handle.withReasoning || (this.joined.get(reply.session_id) ?? false));
        const first = this.streams.get(reply.stream_id);
        if (first !== undefined && first !== handle && !first.ended) {
          // The same request again on this client: its handle has every event so far.
          handle.mirror(first);
          return;
        }
        handle.accept(reply);
        this.streams.set(reply.stream_id, handle);
        // A repeated request answers the first ack and joins the room from now on: the
        // tokens sent while the ack was lost come from a resume.
        if (attempt > 1 || repeatable) void this.sendResume(handle);
        return;
      }
    } finally {
      this.waitingAcks -= 1;
      this.releaseOrphans();
    }
  }

  /** A handle for a stream already running, filled from seq 1. */
  private follow(
    streamId: string,
    sessionId: string,
    epoch: string | undefined,
    reasoning: boolean,
    regenerates?: string,
    messageId?: string,
  ): StreamHandle {
    const handle = new StreamHandle((id) => this.stop(id));
    this.track(handle);
    handle.withReasoning = reasoning;
    handle.accept({ stream_id: streamId, session_id: sessionId, message_id: messageId, epoch, regenerates });
    this.streams.set(streamId, handle);
    void this.sendResume(handle);
    return handle;
  }

  /** `chat_resume` after what the handle holds, in both sequences. */
  private async sendResume(handle: StreamHandle): Promise<void> {
    const streamId = handle.streamId as string;
    let reply;
    try {
      await this.connected();
      // Read once connected: the handle may have got more meanwhile.
      const payload: ChatResumeRequest = { stream_id: streamId, after: handle.lastSeq };
      if (handle.epoch !== undefined) payload.epoch = handle.epoch;
      if (handle.withReasoning) {
        payload.reasoning = true;
        payload.after_reasoning = handle.lastReasoningSeq;
      }
      reply = await this.socket.timeout(this.ackTimeout).emitWithAck("chat_resume", payload);
    } catch (error) {
      // Disconnected meanwhile: the next connect resumes it again.
      if (!this.socket.connected && !this.closed) return;
      handle.fail(toError(error, handle));
      return;
    }
    if (!reply.ok) {
      handle.fail(ChatsockError.fromBody(reply.error, { streamId, partial: handle.text }));
    }
  }

  private route(event: StreamEvent): void {
    const payload = event[1];
    const handle = this.streams.get(payload.stream_id);
    if (handle !== undefined) {
      deliver(handle, event);
      return;
    }
    if (this.waitingAcks > 0) {
      this.orphans.push(event);
      return;
    }
    this.foreign(event);
  }

  /** A stream this client did not start nor follow yet: someone else's, in a joined session. */
  private foreign(event: StreamEvent): void {
    const [kind, payload] = event;
    if (kind !== "chat_stream_start" || !this.joined.has(payload.session_id)) return;
    const handle = new StreamHandle((id) => this.stop(id));
    this.track(handle);
    handle.withReasoning = this.joined.get(payload.session_id) ?? false;
    handle.accept({
      stream_id: payload.stream_id,
      session_id: payload.session_id,
      message_id: payload.message_id,
      regenerates: payload.regenerates,
    });
    this.streams.set(payload.stream_id, handle);
    deliver(handle, event);
    this.emit("stream", handle);
  }

  private releaseOrphans(): void {
    if (this.waitingAcks > 0) return;
    const orphans = this.orphans;
    this.orphans = [];
    for (const event of orphans) this.route(event);
  }

  private onConnect(): void {
    this.connects += 1;
    this.draining = false;
    this.authExpired = false;
    this.setConnection("connected");
    for (const waiter of this.waiters) waiter.resolve();
    this.waiters.clear();
    if (this.connects === 1) return;
    // A new connection is in no room: resume every stream from where it is.
    const resumed = new Set<string>();
    for (const handle of this.streams.values()) {
      if (handle.ended) continue;
      if (handle.sessionId) resumed.add(handle.sessionId);
      void this.sendResume(handle);
    }
    for (const [sessionId, reasoning] of this.joined) {
      if (!resumed.has(sessionId)) void this.rejoin(sessionId, reasoning);
    }
  }

  private async rejoin(sessionId: string, reasoning: boolean): Promise<void> {
    try {
      await this.joinSession(sessionId, true, reasoning);
    } catch {
      // The session is gone or refused: nothing more to follow there.
    }
  }

  private onDisconnect(reason: string): void {
    if (this.closed) return;
    if (reason === "io server disconnect") {
      // socket.io-client does not reconnect after a server-side disconnect.
      const refreshable = typeof this.options.token === "function";
      if (this.draining || (this.authExpired && refreshable)) {
        this.setConnection("reconnecting");
        this.socket.connect();
        return;
      }
      this.setConnection("disconnected");
      return;
    }
    this.setConnection("reconnecting");
  }

  private onConnectError(error: Error & { data?: { code?: string } }): void {
    if (this.socket.active || this.closed) {
      this.setConnection("reconnecting");
      return;
    }
    // Refused by the server (e.g. no valid token): no reconnection follows.
    this.setConnection("disconnected");
    const code = error.data?.code === "unauthorized" || error.data?.code === "rate_limited"
      ? error.data.code
      : "connection_lost";
    const failure = new ChatsockError({ code, message: error.message });
    for (const waiter of this.waiters) waiter.reject(failure);
    this.waiters.clear();
    this.failAll(code, error.message);
  }

  private connected(): Promise<void> {
    if (this.closed) {
      return Promise.reject(new ChatsockError({ code: "closed", message: "the client was closed" }));
    }
    if (this.socket.connected) return Promise.resolve();
    if (!this.socket.active) this.socket.connect();
    return new Promise((resolve, reject) => this.waiters.add({ resolve, reject }));
  }

  private setConnection(status: ConnectionStatus): void {
    if (this.connection === status) return;
    this.connection = status;
    this.emit("connection", status);
  }
}

function deliver(handle: StreamHandle, [kind, payload]: StreamEvent): void {
  if (!handle.sessionId) handle.sessionId = payload.session_id;
  switch (kind) {
    case "chat_stream_start":
      handle.start(payload);
      break;
    case "chat_token":
      handle.token(payload);
      break;
    case "chat_reasoning":
      handle.addReasoning(payload);
      break;
    case "chat_complete":
      handle.complete(payload);
      break;
    case "chat_stream_error":
      handle.fail(ChatsockError.fromStreamError(payload));
      break;
  }
}

function toError(error: unknown, handle?: StreamHandle): ChatsockError {
  if (error instanceof ChatsockError) return error;
  return new ChatsockError({
    code: "connection_lost",
    message: error instanceof Error ? error.message : String(error),
    partial: handle?.text,
    streamId: handle?.streamId,
  });
}
