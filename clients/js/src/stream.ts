/**
 * A stream handle: one assistant reply, followed through any reconnects.
 * Transports feed it protocol events; it orders tokens by `seq`, drops the
 * ones it already has, and offers events, an async iterator and a promise.
 */
import { Emitter } from "./emitter.js";
import { ChatsockError } from "./errors.js";
import type { ChatComplete, ChatStreamStart, ChatToken } from "./protocol.js";

export type StreamStatus = "starting" | "streaming" | "complete" | "stopped" | "error";

export interface StreamEvents {
  /** The stream was accepted (ack or response headers): ids are known. */
  accepted: (handle: StreamHandle) => void;
  start: (event: ChatStreamStart) => void;
  /** New text, in order, exactly once. */
  token: (text: string, event: ChatToken) => void;
  complete: (event: ChatComplete) => void;
  error: (error: ChatsockError) => void;
}

export interface StreamIds {
  stream_id: string;
  session_id: string;
  message_id?: string;
  epoch?: string;
}

type Stopper = (streamId: string) => Promise<boolean>;

export class StreamHandle extends Emitter<StreamEvents> {
  streamId: string | undefined;
  sessionId: string | undefined;
  messageId: string | undefined;
  /** The stream's log epoch, passed back on resume (protocol `epoch`). */
  epoch: string | undefined;
  provider: string | undefined;
  model: string | undefined;
  /** The text so far: every token up to `lastSeq`, in order. */
  text = "";
  /** The highest seq delivered in order: resume after it. */
  lastSeq = 0;
  status: StreamStatus = "starting";
  result: ChatComplete | undefined;
  error: ChatsockError | undefined;
  /** Settles when the stream ends: its `chat_complete`, or the error. */
  readonly done: Promise<ChatComplete>;

  private readonly chunks: string[] = [];
  private readonly pending = new Map<number, ChatToken>();
  private readonly wakers = new Set<() => void>();
  private resolveDone!: (event: ChatComplete) => void;
  private rejectDone!: (error: ChatsockError) => void;
  private readonly accepted: Promise<void>;
  private resolveAccepted!: () => void;

  constructor(private readonly stopper: Stopper) {
    super();
    this.done = new Promise<ChatComplete>((resolve, reject) => {
      this.resolveDone = resolve;
      this.rejectDone = reject;
    });
    // Nobody has to await `done`: an error is also an event.
    this.done.catch(() => undefined);
    this.accepted = new Promise<void>((resolve) => {
      this.resolveAccepted = resolve;
    });
  }

  /** True once the stream has its terminal event (or failed). */
  get ended(): boolean {
    return this.status === "complete" || this.status === "stopped" || this.status === "error";
  }

  /**
   * Stops the stream wherever it runs (its end arrives as `complete` with
   * `stopped: true`). Resolves `true` when this request stopped it, `false`
   * when it had already ended.
   */
  async stop(): Promise<boolean> {
    if (this.ended) return false;
    await Promise.race([this.accepted, this.done.then(() => undefined, () => undefined)]);
    if (this.ended || this.streamId === undefined) return false;
    return this.stopper(this.streamId);
  }

  /** The reply's text, piece by piece, from the first token; throws the stream's error. */
  async *[Symbol.asyncIterator](): AsyncIterator<string> {
    let index = 0;
    for (;;) {
      while (index < this.chunks.length) {
        yield this.chunks[index++] as string;
      }
      if (this.ended) {
        if (this.error !== undefined) throw this.error;
        return;
      }
      await new Promise<void>((resolve) => this.wakers.add(resolve));
    }
  }

  // --- fed by the transports -------------------------------------------

  /** @internal The stream's ids are known (ack, headers, resume). */
  accept(ids: StreamIds): void {
    this.streamId = ids.stream_id;
    this.sessionId = ids.session_id;
    this.messageId = ids.message_id ?? this.messageId;
    this.epoch = ids.epoch ?? this.epoch;
    if (this.status === "starting") this.status = "streaming";
    this.resolveAccepted();
    this.emit("accepted", this);
  }

  /** @internal */
  start(event: ChatStreamStart): void {
    this.messageId = event.message_id;
    this.provider = event.provider;
    this.model = event.model;
    this.emit("start", event);
  }

  /** @internal A token in any order; delivered in seq order, each seq once. */
  token(event: ChatToken): void {
    if (this.ended || event.seq <= this.lastSeq || this.pending.has(event.seq)) return;
    this.pending.set(event.seq, event);
    this.drain();
  }

  /** @internal */
  complete(event: ChatComplete): void {
    if (this.ended) return;
    this.flushPending();
    this.result = event;
    this.messageId = event.message_id;
    this.provider = event.provider ?? this.provider;
    this.model = event.model ?? this.model;
    this.status = event.stopped ? "stopped" : "complete";
    this.resolveAccepted();
    this.emit("complete", event);
    this.resolveDone(event);
    this.wake();
  }

  /** @internal */
  fail(error: ChatsockError): void {
    if (this.ended) return;
    this.flushPending();
    this.error = error;
    this.status = "error";
    this.resolveAccepted();
    this.emit("error", error);
    this.rejectDone(error);
    this.wake();
  }

  private drain(): void {
    for (;;) {
      const next = this.pending.get(this.lastSeq + 1);
      if (next === undefined) return;
      this.pending.delete(next.seq);
      this.lastSeq = next.seq;
      this.push(next.token, next);
    }
  }

  private flushPending(): void {
    this.drain();
    for (const seq of [...this.pending.keys()].sort((a, b) => a - b)) {
      const event = this.pending.get(seq) as ChatToken;
      this.lastSeq = seq;
      this.push(event.token, event);
    }
    this.pending.clear();
  }

  private push(text: string, event?: ChatToken): void {
    if (this.status === "starting") this.status = "streaming";
    this.text += text;
    this.chunks.push(text);
    if (event !== undefined) this.emit("token", text, event);
    this.wake();
  }

  private wake(): void {
    const wakers = [...this.wakers];
    this.wakers.clear();
    for (const wake of wakers) wake();
  }
}
