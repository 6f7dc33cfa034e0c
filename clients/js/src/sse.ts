/** An incremental parser of Server-Sent Events (the WHATWG event stream format). */

export interface SseEvent {
  event: string;
  data: string;
  id: string | undefined;
}

export class SseParser {
  private buffer = "";
  private event = "";
  private data: string[] = [];
  private id: string | undefined;

  /** Feeds decoded text; returns the events it completed. */
  feed(chunk: string): SseEvent[] {
    this.buffer += chunk;
    const events: SseEvent[] = [];
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffer);
      // A lone "\r" at the end may be the first half of "\r\n".
      if (match === null || (match[0] === "\r" && match.index === this.buffer.length - 1)) break;
      const line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      const event = this.line(line);
      if (event !== undefined) events.push(event);
    }
    return events;
  }

  private line(line: string): SseEvent | undefined {
    if (line === "") {
      if (this.data.length === 0) {
        this.event = "";
        return undefined;
      }
      const event = { event: this.event || "message", data: this.data.join("\n"), id: this.id };
      this.event = "";
      this.data = [];
      return event;
    }
    if (line.startsWith(":")) return undefined; // a comment: the ": ping" heartbeat
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.id = value;
    return undefined;
  }
}

/** A position in a stream, as chatsock's SSE ids name it. */
export interface EventPosition {
  /** The last `chat_token` seq. */
  seq: number;
  /** The last `chat_reasoning` seq: only in the ids of a client that opted in to reasoning. */
  reasoningSeq: number | undefined;
}

/**
 * Parses a chatsock SSE id: `<seq>`, or `<seq>.<reasoning seq>` for a client
 * that opted in to reasoning; undefined for anything else.
 */
export function parseEventId(id: string | undefined): EventPosition | undefined {
  const match = /^(\d+)(?:\.(\d+))?$/.exec(id?.trim() ?? "");
  if (match === null) return undefined;
  return { seq: Number(match[1]), reasoningSeq: match[2] === undefined ? undefined : Number(match[2]) };
}

/** The SSE id (and `Last-Event-ID`) of a position: `<seq>` or `<seq>.<reasoning seq>`. */
export function formatEventId(seq: number, reasoningSeq?: number): string {
  return reasoningSeq === undefined ? String(seq) : `${seq}.${reasoningSeq}`;
}
