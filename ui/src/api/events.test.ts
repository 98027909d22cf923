import { describe, expect, it } from "vitest";
import { followEvents, parseSse } from "./events";

describe("parseSse", () => {
  it("splits complete messages and keeps the unfinished tail", () => {
    const { messages, rest } = parseSse(': keep-alive\n\nid: 5\nevent: vm.started\ndata: {"id":5}\n\nid: 6\nda');
    expect(messages).toEqual([{ id: "5", event: "vm.started", data: '{"id":5}' }]);
    expect(rest).toBe("id: 6\nda");
  });
  it("joins multi-line data and accepts CRLF", () => {
    const { messages } = parseSse("data: a\r\ndata: b\r\n\r\n");
    expect(messages[0].data).toBe("a\nb");
  });
});

function sse(chunks: string[]): Response {
  const enc = new TextEncoder();
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      chunks.forEach((x) => c.enqueue(enc.encode(x)));
      c.close();
    },
  });
  return new Response(body, { status: 200, headers: { "Content-Type": "text/event-stream" } });
}

const ev = (id: number) => `id: ${id}\nevent: vm.started\ndata: ${JSON.stringify({ id, type: "vm.started" })}\n\n`;

describe("followEvents", () => {
  it("resumes after the last event id when the stream drops, with the token", async () => {
    const urls: string[] = [];
    const auths: string[] = [];
    const responses = [sse([ev(1), ev(2).slice(0, 10), ev(2).slice(10)]), sse([ev(3)])];
    const seen: number[] = [];
    const h = followEvents(
      (e) => seen.push(e.id),
      {
        fetch: (async (url: string, init: RequestInit) => {
          urls.push(url);
          auths.push((init.headers as Record<string, string>).Authorization);
          return responses.shift() ?? sse([]);
        }) as unknown as typeof fetch,
        token: () => "tok",
        refresh: async () => true,
        sleep: async () => undefined,
      },
      { maxAttempts: 2 },
    );
    await h.done;
    expect(seen).toEqual([1, 2, 3]);
    expect(urls).toEqual(["/v1/events/stream", "/v1/events/stream?after=2"]);
    expect(auths).toEqual(["Bearer tok", "Bearer tok"]);
    expect(h.cursor()).toBe("3");
  });

  it("refreshes the session on a 401 and starts from the given cursor", async () => {
    let refreshed = 0;
    const urls: string[] = [];
    const h = followEvents(
      () => undefined,
      {
        fetch: (async (url: string) => {
          urls.push(url);
          return new Response("", { status: 401 });
        }) as unknown as typeof fetch,
        token: () => "tok",
        refresh: async () => (refreshed++, true),
        sleep: async () => undefined,
      },
      { maxAttempts: 1, after: "41" },
    );
    await h.done;
    expect(refreshed).toBe(1);
    expect(urls).toEqual(["/v1/events/stream?after=41"]);
  });
});
