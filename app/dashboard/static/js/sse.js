// Server-Sent Events read with fetch, because EventSource cannot send the Authorization header: the frames
// are parsed here as the HTML standard says (event:, data:, id:, retry:, comments), and a dropped connection
// is resumed with Last-Event-ID, which the server continues from with no gap and no duplicate.

import { ApiError, request } from "./api.js";

export class SseParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.rest = ""; // an unfinished line
    this.lastEventId = "";
    this.retry = null;
    this.reset();
  }

  reset() {
    this.type = "";
    this.data = [];
    this.pendingId = null;
  }

  // Lines end with \r\n, \n or \r; a \r that ends a chunk may be half of a \r\n, so it waits for the next.
  push(chunk) {
    const text = this.rest + chunk;
    let pos = 0;
    for (;;) {
      const lf = text.indexOf("\n", pos);
      const cr = text.indexOf("\r", pos);
      let end;
      let next;
      if (cr !== -1 && (lf === -1 || cr < lf)) {
        if (cr + 1 === text.length) break;
        end = cr;
        next = text[cr + 1] === "\n" ? cr + 2 : cr + 1;
      } else if (lf !== -1) {
        end = lf;
        next = lf + 1;
      } else {
        break;
      }
      this.line(text.slice(pos, end));
      pos = next;
    }
    this.rest = text.slice(pos);
  }

  line(line) {
    if (line === "") return this.dispatch();
    if (line[0] === ":") return undefined; // a comment (keep-alive)
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "event") this.type = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.pendingId = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
    return undefined;
  }

  // The id counts once its frame is complete: a connection cut mid-frame resumes before that frame.
  dispatch() {
    if (this.pendingId !== null) this.lastEventId = this.pendingId;
    if (this.data.length) {
      this.onEvent({ event: this.type || "message", data: this.data.join("\n"), id: this.lastEventId });
    }
    this.reset();
  }
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

// Follow `path` until an `end` event (returns), the signal aborts (returns), or a 4xx that a retry cannot
// mend (throws ApiError). onEvent(type, data) gets parsed JSON; onState("live" | "reconnecting") the link.
export async function follow(path, { onEvent, onState = () => {}, signal }) {
  let lastEventId = "";
  let delay = 1000;
  while (!signal.aborted) {
    let ended = false;
    try {
      const headers = { Accept: "text/event-stream" };
      if (lastEventId) headers["Last-Event-ID"] = lastEventId;
      const response = await request(path, { headers, signal });
      onState("live");
      const parser = new SseParser((frame) => {
        lastEventId = frame.id;
        if (frame.event === "end") ended = true;
        onEvent(frame.event, JSON.parse(frame.data));
      });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(value);
        delay = parser.retry ?? 1000; // data flowed: the next reconnect is a prompt one
      }
      if (ended) return;
    } catch (error) {
      if (signal.aborted) return;
      const retriable = !(error instanceof ApiError) || error.status >= 500 || error.status === 429;
      if (!retriable) throw error;
      if (error instanceof ApiError && error.retryAfter) delay = Math.max(delay, error.retryAfter * 1000);
    }
    onState("reconnecting");
    await sleep(delay, signal);
    delay = Math.min(delay * 2, 15_000);
  }
}
