import { describe, expect, it } from "vitest";
import { parseNdjson, readNdjson } from "./ndjson";

describe("parseNdjson", () => {
  it("keeps an unfinished line for later and skips blank and broken lines", () => {
    const r = parseNdjson<{ n: number }>('{"n":1}\n\n{"n":\nnot json\n{"n":2}\n{"n":3');
    expect(r.items).toEqual([{ n: 1 }, { n: 2 }]);
    expect(r.bad).toBe(2);
    expect(r.rest).toBe('{"n":3');
  });
});

describe("readNdjson", () => {
  it("delivers values split across chunks, and a last line without a newline", async () => {
    const enc = new TextEncoder();
    const chunks = ['{"line":"a', 'b"}\n{"li', 'ne":"c"}\n{"line":"d"}'];
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        chunks.forEach((x) => c.enqueue(enc.encode(x)));
        c.close();
      },
    });
    const got: string[] = [];
    await readNdjson<{ line: string }>(body, (items) => got.push(...items.map((i) => i.line)));
    expect(got).toEqual(["ab", "c", "d"]);
  });

  it("stops when aborted", async () => {
    const body = new ReadableStream<Uint8Array>({ start() {} }); // never sends anything
    const ctrl = new AbortController();
    const done = readNdjson(body, () => undefined, ctrl.signal);
    ctrl.abort();
    await expect(done).resolves.toBeUndefined();
  });
});
