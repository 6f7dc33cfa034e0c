/**
 * A stream handle: one assistant reply, followed through any reconnects.
 * Transports feed it protocol events; it orders tokens (and, opted in, the
 * reasoning: its own seq) by `seq`, drops the ones it already has, and offers
 * events, async iterators and a promise.
 */
import { Emitter } from "./emitter.js";
import { ChatsockError } from "./errors.js";
import type { ChatComplete, ChatReasoning, ChatStreamStart, ChatToken } from "./protocol.js";

export type StreamStatus = "starting" | "streaming" | "complete" | "stopped" | "error";

export interface StreamEvents {
  /** The stream was accepted (ack or response headers): ids are known. */
  accepted: (handle: StreamHandle) => void;
  start: (event: ChatStreamStart) => void;
  /** New text, in order, exactly once. */
  token: (text: string, event: ChatToken) => void;
  /** New reasoning (a client that opted in), in order, exactly once. */
  reasoning: (text: string, event: ChatReasoning) => void;
  complete: (event: ChatComplete) => void;
  error: (error: ChatsockError) => void;
}

export interface StreamIds {
  stream_id: string;
  session_id: string;
  message_id?: string;
  epoch?: string;
  regenerates?: string;
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
  /** The reasoning so far (a client that opted in): every `chat_reasoning` up to `lastReasoningSeq`. */
  reasoning = "";
  /** The highest reasoning seq delivered in order: resume after it (`after_reasoning`). */
  lastReasoningSeq = 0;
  /** Whether this handle asked for the reasoning: every resume asks for it again. */
  withReasoning = false;
  /** A regenerate's handle: the `message_id` of the reply it replaces. */
  regenerates: string | undefined;
  status: StreamStatus = "starting";
  result: ChatComplete | undefined;
  error: ChatsockError | undefined;
  /** Settles when the stream ends: its `chat_complete`, or the error. */
  readonly done: Promise<ChatComplete>;

  private readonly tokens: ChatToken[] = [];
  private readonly thoughts: ChatReasoning[] = [];
  private started: ChatStreamStart | undefined;
  private readonly pending = new Map<number, ChatToken>();
  private readonly pendingReasoning = new Map<number, ChatReasoning>();
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
  [Symbol.asyncIterator](): AsyncIterator<string> {
    return this.pieces(this.tokens, (event) => event.token);
  }

  /**
   * The reasoning, piece by piece, from the first (empty unless the client
   * opted in with `reasoning: true`); ends with the stream, throws its error.
   */
  reasoningChunks(): AsyncIterable<string> {
    return { [Symbol.asyncIterator]: () => this.pieces(this.thoughts, (event) => event.reasoning) };
  }

  private async *pieces<E>(events: E[], text: (event: E) => string): AsyncGenerator<string> {
    let index = 0;
    for (;;) {
      while (index < events.length) {
        yield text(events[index++] as E);
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
    this.regenerates = ids.regenerates ?? this.regenerates;
    if (this.status === "starting") this.status = "streaming";
    this.resolveAccepted();
    this.emit("accepted", this);
  }

  /** @internal */
  start(event: ChatStreamStart): void {
    this.started = event;
    this.messageId = event.message_id;
    this.regenerates = event.regenerates ?? this.regenerates;
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

  /** @internal A `chat_reasoning` in any order; delivered in its seq order, each seq once. */
  addReasoning(event: ChatReasoning): void {
    if (this.ended || event.seq <= this.lastReasoningSeq || this.pendingReasoning.has(event.seq)) return;
    this.pendingReasoning.set(event.seq, event);
    this.drain();
  }

  /**
   * @internal Follows `source`, another handle of the same stream on this
   * client (a request repeated with its client_message_id): the same events,
   * from the first.
   */
  mirror(source: StreamHandle): void {
    this.withReasoning ||= source.withReasoning;
    this.accept({
      stream_id: source.streamId as string,
      session_id: source.sessionId as string,
      message_id: source.messageId,
      epoch: source.epoch,
      regenerates: source.regenerates,
    });
    if (source.started !== undefined) this.start(source.started);
    for (const event of source.thoughts) this.addReasoning(event);
    for (const event of source.tokens) this.token(event);
    if (source.result !== undefined) return this.complete(source.result);
    if (source.error !== undefined) return this.fail(source.error);
    const offs = [
      source.on("start", (event) => this.start(event)),
      source.on("reasoning", (_, event) => this.addReasoning(event)),
      source.on("token", (_, event) => this.token(event)),
      source.on("complete", (event) => this.complete(event)),
      source.on("error", (error) => this.fail(error)),
    ];
    this.done.then(() => offs.forEach((off) => off()), () => offs.forEach((off) => off()));
  }

  /** @internal */
  complete(event: ChatComplete): void {
    if (this.ended) return;
    this.flushPending();
    this.result = event;
    this.messageId = event.message_id;
    this.regenerates = event.regenerates ?? this.regenerates;
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
      const next = this.pendingReasoning.get(this.lastReasoningSeq + 1);
      if (next === undefined) break;
      this.pendingReasoning.delete(next.seq);
      this.lastReasoningSeq = next.seq;
      this.pushReasoning(next);
    }
    for (;;) {
      const next = this.pending.get(this.lastSeq + 1);
      if (next === undefined) return;
      this.pending.delete(next.seq);
      this.lastSeq = next.seq;
      this.push(next);
    }
  }

  /** At the end: whatever is still out of order goes out in seq order (a gap cannot fill any more). */
  private flushPending(): void {
    this.drain();
    for (const seq of [...this.pendingReasoning.keys()].sort((a, b) => a - b)) {
      this.lastReasoningSeq = seq;
      this.pushReasoning(this.pendingReasoning.get(seq) as ChatReasoning);
    }
    this.pendingReasoning.clear();
    for (const seq of [...this.pending.keys()].sort((a, b) => a - b)) {
      this.lastSeq = seq;
      this.push(this.pending.get(seq) as ChatToken);
    }
    this.pending.clear();
  }

  private push(event: ChatToken): void {
    if (this.status === "starting") this.status = "streaming";
    this.text += event.token;
    this.tokens.push(event);
    this.emit("token", event.token, event);
    this.wake();
  }

  private pushReasoning(event: ChatReasoning): void {
    if (this.status === "starting") this.status = "streaming";
    this.reasoning += event.reasoning;
    this.thoughts.push(event);
    this.emit("reasoning", event.reasoning, event);
    this.wake();
  }

  private wake(): void {
    const wakers = [...this.wakers];
    this.wakers.clear();
    for (const wake of wakers) wake();
  }
}
