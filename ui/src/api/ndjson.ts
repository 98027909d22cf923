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

/** Read `body` to its end (or until `signal` aborts), calling `onItems` with each batch. */
export async function readNdjson<T>(
  body: ReadableStream<Uint8Array>,
  onItems: (items: T[]) => void,
  signal?: AbortSignal,
): Promise<void> {
  const reader = body.getReader();
  const onAbort = () => void reader.cancel().catch(() => undefined);
  signal?.addEventListener("abort", onAbort);
  const decoder = new TextDecoder();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      const parsed = parseNdjson<T>(buf);
      buf = parsed.rest;
      if (parsed.items.length) onItems(parsed.items);
    }
    const last = parseNdjson<T>(buf + "\n");
    if (last.items.length) onItems(last.items);
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }
}
