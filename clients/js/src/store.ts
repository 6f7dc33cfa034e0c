/**
 * A framework-free chat store over a ChatClient: the messages of one session,
 * the reply in flight, and its error. The React and Vue bindings are thin
 * views of it; a page without a framework can subscribe to it directly.
 */
import type { ChatClient, ConnectionStatus, RegenerateOptions, SendOptions } from "./client.js";
import { ChatsockError } from "./errors.js";
import type { ChatComplete, ErrorCode, MessageStatus, MessageVersion, StoredMessage } from "./protocol.js";
import type { StreamHandle } from "./stream.js";

/**
 * `idle` (nothing running), `loading` (opening a session), `submitted` (sent,
 * no token yet: show typing dots), `streaming`, `error` (the last reply failed).
 */
export type ChatStatus = "idle" | "loading" | "submitted" | "streaming" | "error";

export interface ChatMessage {
  /** The server's message_id, or a local id until the server names it. */
  id: string;
  role: "user" | "assistant";
  content: string;
  status: "pending" | "streaming" | "complete" | "stopped" | "error";
  streamId?: string;
  errorCode?: ErrorCode;
  provider?: string;
  model?: string;
  /** The `chat_complete` of a reply this store saw end (tok/s, usage, ...). */
  result?: ChatComplete;
  /** The model's reasoning (a client that opted in: `reasoning: true`), apart from `content`. */
  reasoning?: string;
  /** The replies this one replaced (regenerate), oldest first; absent when never regenerated. */
  versions?: readonly ChatMessageVersion[];
}

/** An earlier reply of a regenerated message. */
export interface ChatMessageVersion {
  content: string;
  status: MessageStatus | ChatMessage["status"];
  reasoning?: string;
  streamId?: string;
  errorCode?: ErrorCode;
  provider?: string;
  model?: string;
  createdAt?: string;
}

export interface ChatState {
  sessionId: string | undefined;
  messages: readonly ChatMessage[];
  status: ChatStatus;
  /** The last reply's error; `error.partial` is the text it had. */
  error: ChatsockError | null;
  connection: ConnectionStatus;
}

export interface ChatStoreOptions {
  client?: ChatClient | null;
  sessionId?: string;
  /** Defaults for every send (provider, model, system prompt, ...). */
  defaults?: Omit<SendOptions, "sessionId" | "clientMessageId">;
}

type Listener = () => void;

export class ChatStore {
  private state: ChatState;
  private client: ChatClient | null = null;
  private current: StreamHandle | null = null;
  private readonly listeners = new Set<Listener>();
  private unbind: (() => void)[] = [];
  private localIds = 0;
  private lastRequest:
    | { kind: "send"; text: string; options: SendOptions }
    | { kind: "regenerate"; options: RegenerateOptions }
    | undefined;
  private readonly localIdSet = new Set<string>();
  private readonly defaults: ChatStoreOptions["defaults"];

  constructor(options: ChatStoreOptions = {}) {
    this.defaults = options.defaults;
    this.state = {
      sessionId: options.sessionId,
      messages: [],
      status: "idle",
      error: null,
      connection: "connecting",
    };
    if (options.client) this.setClient(options.client);
  }

  /** The current state; a new object after every change (for useSyncExternalStore). */
  getState = (): ChatState => this.state;

  subscribe = (listener: Listener): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  /** Attaches (or detaches, with null) the client; opens the session if one is set. */
  setClient(client: ChatClient | null): void {
    for (const off of this.unbind) off();
    this.unbind = [];
    this.client = client;
    this.current = null;
    if (client === null) return;
    this.update({ connection: client.connection });
    this.unbind.push(
      client.on("connection", (connection) => this.update({ connection })),
      client.on("stream", (handle) => void this.adopt(handle)),
      client.on("session_deleted", (event) => {
        if (event.session_id === this.state.sessionId) this.update({ messages: [], status: "idle" });
      }),
    );
    if (this.state.sessionId !== undefined) void this.open(this.state.sessionId);
  }

  /** Shows a session: its stored messages, and its reply in flight followed live. */
  async open(sessionId: string | undefined): Promise<void> {
    this.current = null;
    this.update({ sessionId, messages: [], error: null, status: sessionId ? "loading" : "idle" });
    if (sessionId === undefined || this.client === null) return;
    const client = this.client;
    try {
      const reasoning = this.defaults?.reasoning;
      const joined = await client.join(sessionId, reasoning === undefined ? {} : { reasoning });
      if (this.client !== client || this.state.sessionId !== sessionId) return;
      const messages = joined.messages.map(fromStored);
      this.update({ messages, status: "idle" });
      const active = joined.active;
      if (active !== null && active.regenerates !== undefined) this.follow(active, active.regenerates);
      else if (active !== null && !messages.some((m) => m.id === active.messageId)) this.follow(active);
    } catch (error) {
      if (this.state.sessionId !== sessionId) return;
      this.update({ status: "error", error: asError(error) });
    }
  }

  /** Sends a user message in the current session (a new one when none). */
  send = (text: string, options: SendOptions = {}): StreamHandle | undefined => {
    if (this.client === null) return undefined;
    const merged: SendOptions = { ...this.defaults, sessionId: this.state.sessionId, ...options };
    this.lastRequest = { kind: "send", text, options: merged };
    const user: ChatMessage = { id: this.localId(), role: "user", content: text, status: "complete" };
    this.update({ messages: [...this.state.messages, user], error: null });
    const handle = this.client.send(text, merged);
    this.follow(handle);
    return handle;
  };

  /**
   * A new reply to the session's last user message, in the place of its reply:
   * the old reply becomes the message's last version (as the server keeps it).
   * Undefined without a session or a client, or while a reply streams.
   */
  regenerate = (options: RegenerateOptions = {}): StreamHandle | undefined => {
    const sessionId = this.state.sessionId;
    if (this.client === null || sessionId === undefined) return undefined;
    // One reply at a time: the server refuses a regenerate while the session streams.
    if (this.current !== null && !this.current.ended) return undefined;
    const { history: _, ...defaults } = this.defaults ?? {};
    const merged: RegenerateOptions = { ...defaults, ...options };
    this.lastRequest = { kind: "regenerate", options: merged };
    const messages = this.state.messages;
    const lastUser = messages.map((m) => m.role).lastIndexOf("user");
    const reply = messages.slice(lastUser + 1).filter((m) => m.role === "assistant").at(-1);
    // The server checks that the reply shown is still the session's last one.
    if (reply !== undefined && merged.messageId === undefined && !this.localIdSet.has(reply.id)) {
      merged.messageId = reply.id;
    }
    this.update({ error: null });
    const handle = this.client.regenerate(sessionId, merged);
    this.follow(handle, reply?.id ?? null);
    return handle;
  };

  /** Stops the reply in flight; `true` when this stopped it. */
  stop = async (): Promise<boolean> => {
    const handle = this.current;
    if (handle === null || handle.ended) return false;
    return handle.stop();
  };

  /** Sends the last message again after an error, replacing the failed reply. */
  retry = (): StreamHandle | undefined => {
    const last = this.lastRequest;
    if (last === undefined || this.client === null) return undefined;
    if (last.kind === "regenerate") {
      const { clientMessageId: _, ...options } = last.options;
      return this.regenerate(options);
    }
    const messages = [...this.state.messages];
    if (messages.at(-1)?.role === "assistant" && messages.at(-1)?.status === "error") messages.pop();
    if (messages.at(-1)?.role === "user" && messages.at(-1)?.content === last.text) messages.pop();
    this.update({ messages });
    const { clientMessageId: _, ...options } = last.options;
    return this.send(last.text, options);
  };

  /** A stream started elsewhere (another tab) in this session. */
  private async adopt(handle: StreamHandle): Promise<void> {
    if (this.client === null || handle.sessionId !== this.state.sessionId || handle === this.current) return;
    const sessionId = this.state.sessionId;
    try {
      // The other tab's user message is stored before its reply starts.
      const detail = await this.client.history(sessionId as string);
      if (this.state.sessionId !== sessionId) return;
      // A regenerate's old reply stays: it becomes a version of the new one.
      const kept = detail.messages.filter((m) => handle.regenerates !== undefined || m.message_id !== handle.messageId);
      this.update({ messages: kept.map(fromStored) });
    } catch {
      // Show the reply anyway, without the other tab's question.
    }
    this.follow(handle, handle.regenerates);
  }

  /**
   * Shows `handle`'s reply: appended, or, for a regenerate, in the place of the
   * reply it replaces (`replaces`: its id; null: none shown), which becomes
   * the new one's last version.
   */
  private follow(handle: StreamHandle, replaces?: string | null): void {
    this.current = handle;
    const live = handle.text !== "" || handle.reasoning !== "";
    let reply: ChatMessage = {
      id: handle.messageId ?? replaces ?? this.localId(),
      role: "assistant",
      content: handle.text,
      status: live ? "streaming" : "pending",
      streamId: handle.streamId,
    };
    if (handle.reasoning) reply.reasoning = handle.reasoning;
    const messages = [...this.state.messages];
    const at = replaces == null ? -1 : messages.findIndex((m) => m.id === replaces && m.role === "assistant");
    const old = at < 0 ? undefined : (messages[at] as ChatMessage);
    if (old === undefined) messages.push(reply);
    else if (old.streamId !== undefined && old.streamId === handle.streamId) {
      // Already the new reply (it ended while the session was opened): no version to add.
      reply = { ...old, id: reply.id };
      messages[at] = reply;
    } else {
      messages[at] = { ...reply, id: old.id, versions: [...(old.versions ?? []), versionOf(old)] };
    }
    const id = (messages[at < 0 ? messages.length - 1 : at] as ChatMessage).id;
    this.update({ messages, status: live ? "streaming" : "submitted", error: null });
    let key = id;
    const patch = (change: Partial<ChatMessage>, state: Partial<ChatState> = {}) => {
      const live = this.state.messages.findIndex((m) => m.id === key);
      let messages = this.state.messages.map((m, i) => (i === live ? { ...m, ...change } : m));
      if (change.id !== undefined && change.id !== key && live >= 0) {
        // The reply's stored copy (it ended while the session was being opened)
        // gives way to the live one: a reply is shown once.
        messages = messages.filter((m, i) => i === live || m.id !== change.id);
      }
      if (change.id !== undefined) key = change.id;
      const isCurrent = this.current === handle;
      this.update(isCurrent ? { messages, ...state } : { messages });
    };
    handle.on("accepted", () => {
      if (this.state.sessionId === undefined && handle.sessionId) this.update({ sessionId: handle.sessionId });
      patch({ streamId: handle.streamId, ...(handle.messageId ? { id: handle.messageId } : {}) });
    });
    handle.on("start", (event) => patch({ id: event.message_id, provider: event.provider, model: event.model }));
    handle.on("token", () => patch({ content: handle.text, status: "streaming" }, { status: "streaming" }));
    handle.on("reasoning", () => patch({ reasoning: handle.reasoning, status: "streaming" }, { status: "streaming" }));
    handle.on("complete", (event) =>
      patch(
        {
          id: event.message_id,
          content: event.full_response,
          status: event.stopped ? "stopped" : "complete",
          provider: event.provider ?? undefined,
          model: event.model ?? undefined,
          result: event,
        },
        { status: "idle" },
      ),
    );
    handle.on("error", (error) => {
      if (old !== undefined && handle.streamId === undefined) {
        // A refused regenerate started nothing: the old reply is still the one.
        const messages = this.state.messages.map((m) => (m.id === key ? old : m));
        this.update(this.current === handle ? { messages, status: "error", error } : { messages });
        return;
      }
      patch(
        { content: error.partial || handle.text, status: "error", errorCode: error.code },
        { status: "error", error },
      );
    });
  }

  private localId(): string {
    this.localIds += 1;
    const id = `local-${this.localIds}`;
    this.localIdSet.add(id);
    return id;
  }

  private update(change: Partial<ChatState>): void {
    this.state = { ...this.state, ...change };
    for (const listener of [...this.listeners]) listener();
  }
}

function fromStored(message: StoredMessage): ChatMessage {
  const out: ChatMessage = {
    id: message.message_id,
    role: message.role,
    content: message.content,
    status: message.status,
  };
  if (message.stream_id) out.streamId = message.stream_id;
  if (message.error_code) out.errorCode = message.error_code;
  if (message.provider) out.provider = message.provider;
  if (message.model) out.model = message.model;
  if (message.reasoning) out.reasoning = message.reasoning;
  if (message.versions) out.versions = message.versions.map(fromVersion);
  return out;
}

function fromVersion(version: MessageVersion): ChatMessageVersion {
  const out: ChatMessageVersion = { content: version.content, status: version.status, createdAt: version.created_at };
  if (version.reasoning) out.reasoning = version.reasoning;
  if (version.stream_id) out.streamId = version.stream_id;
  if (version.error_code) out.errorCode = version.error_code;
  if (version.provider) out.provider = version.provider;
  if (version.model) out.model = version.model;
  return out;
}

/** A reply shown until now, as the version a regenerate keeps of it. */
function versionOf(message: ChatMessage): ChatMessageVersion {
  const out: ChatMessageVersion = { content: message.content, status: message.status };
  if (message.reasoning !== undefined) out.reasoning = message.reasoning;
  if (message.streamId !== undefined) out.streamId = message.streamId;
  if (message.errorCode !== undefined) out.errorCode = message.errorCode;
  if (message.provider !== undefined) out.provider = message.provider;
  if (message.model !== undefined) out.model = message.model;
  return out;
}

function asError(error: unknown): ChatsockError {
  if (error instanceof ChatsockError) return error;
  return new ChatsockError({ code: "connection_lost", message: String(error) });
}
