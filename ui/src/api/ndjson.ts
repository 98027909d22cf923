// Newline-delimited JSON streams (e.g. GET /v1/containers/{id}/logs?follow=true): one JSON
// value a line, read from a fetch body as it arrives.

/** Parse the complete lines out of `buffer`; `rest` is the unfinished tail to keep. A line that
 * is not JSON is skipped (counted in `bad`). */
export function parseNdjson<T>(buffer: string): { items: T[]; rest: string; bad: number } {
  const lines = buffer.split("\n");
  const rest = lines.pop() ?? "";
  const items: T[] = [];
  let bad = 0;
  for (const line of lines) {
    if (!line.trim()) continue;
    try {
      items.push(JSON.parse(line) as T);
    } catch {
      bad += 1;
    }
  }
  return { items, rest, bad };
}

/** Read `body` to its end (or until `signal` aborts), splitting the text as it arrives with
 * `parse` (complete items, and the unfinished rest kept for the next chunk) and calling
 * `onItems` with each batch; returns what was left unfinished. The NDJSON reader below and the
 * event stream (events.ts) both read this way. */
export async function readStream<T>(
  body: ReadableStream<Uint8Array>,
  parse: (buffer: string) => { items: T[]; rest: string },
  onItems: (items: T[]) => void,
  signal?: AbortSignal,
): Promise<string> {
  const reader = body.getReader();
  const onAbort = () => void reader.cancel().catch(() => undefined);
  signal?.addEventListener("abort", onAbort);
  const decoder = new TextDecoder();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return buf;
      buf += decoder.decode(value, { stream: true });
      const parsed = parse(buf);
      buf = parsed.rest;
      if (parsed.items.length) onItems(parsed.items);
    }
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }
}

/** Read an NDJSON `body` to its end (or until `signal` aborts), calling `onItems` with each
 * batch; a last line without its newline counts too. */
export async function readNdjson<T>(
  body: ReadableStream<Uint8Array>,
  onItems: (items: T[]) => void,
  signal?: AbortSignal,
): Promise<void> {
  const rest = await readStream(body, (b) => parseNdjson<T>(b), onItems, signal);
  const last = parseNdjson<T>(rest + "\n");
  if (last.items.length) onItems(last.items);
}
