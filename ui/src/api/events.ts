// The live event stream (GET /v1/events/stream, text/event-stream). EventSource cannot send an
// Authorization header, so the stream is read with fetch; after a disconnect it resumes after the
// last event id received (`after=`), so nothing is missed and nothing comes twice.
import { readStream } from "./ndjson";
import type { EventRead } from "./types";

export interface SseMessage {
  id: string | null;
  event: string;
  data: string;
}

/** Parse complete SSE messages out of `buffer`; `rest` is the unfinished tail to keep. */
export function parseSse(buffer: string): { messages: SseMessage[]; rest: string } {
  const messages: SseMessage[] = [];
  const text = buffer.replace(/\r\n?/g, "\n");
  const blocks = text.split("\n\n");
  const rest = blocks.pop() ?? "";
  for (const block of blocks) {
    let id: string | null = null;
    let event = "message";
    const data: string[] = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue; // comment (keep-alive)
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      let value = i < 0 ? "" : line.slice(i + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "id") id = value;
      else if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
    if (data.length || id !== null) messages.push({ id, event, data: data.join("\n") });
  }
  return { messages, rest };
}

export interface StreamDeps {
  fetch: typeof fetch;
  token: () => string | null;
  refresh: () => Promise<boolean>;
  sleep: (ms: number) => Promise<void>;
}

export interface StreamHandle {
  stop(): void;
  cursor(): string | null;
  done: Promise<void>;
}

/** Follow the stream until stopped: `onEvent` per event, reconnecting with backoff. */
export function followEvents(
  onEvent: (e: EventRead) => void,
  deps: StreamDeps,
  opts: { after?: string | null; maxAttempts?: number; onStatus?: (live: boolean) => void } = {},
): StreamHandle {
  let cursor: string | null = opts.after ?? null;
  let stopped = false;
  const ctrl = new AbortController();
  let failures = 0;

  async function once(): Promise<void> {
    const token = deps.token();
    if (!token) throw new Error("signed out");
    const url = cursor ? `/v1/events/stream?after=${encodeURIComponent(cursor)}` : "/v1/events/stream";
    const res = await deps.fetch(url, {
      headers: { Authorization: `Bearer ${token}`, Accept: "text/event-stream" },
      signal: ctrl.signal,
    });
    if (res.status === 401) {
      await deps.refresh();
      throw new Error("unauthorized");
    }
    if (!res.ok || !res.body) throw new Error(`stream answered ${res.status}`);
    opts.onStatus?.(true);
    failures = 0;
    const parse = (b: string) => {
      const p = parseSse(b);
      return { items: p.messages, rest: p.rest };
    };
    await readStream(res.body, parse, (messages) => {
      for (const m of messages) {
        if (m.id !== null) cursor = m.id;
        if (!m.data) continue;
        try {
          onEvent(JSON.parse(m.data) as EventRead);
        } catch {
          /* a malformed message is skipped, the cursor still moves on */
        }
      }
    });
  }

  const done = (async () => {
    let attempts = 0;
    while (!stopped && (opts.maxAttempts === undefined || attempts < opts.maxAttempts)) {
      attempts += 1;
      try {
        await once();
      } catch {
        failures += 1;
      }
      opts.onStatus?.(false);
      if (stopped) break;
      await deps.sleep(Math.min(30_000, 500 * 2 ** Math.min(failures, 6)));
    }
  })();

  return {
    stop() {
      stopped = true;
      ctrl.abort();
    },
    cursor: () => cursor,
    done,
  };
}
