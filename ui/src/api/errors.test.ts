import { describe, expect, it } from "vitest";
import { ApiError, describeError, problemToError, responseToError } from "./errors";

const headers = (h: Record<string, string>) => ({ get: (k: string) => h[k.toLowerCase()] ?? null });

describe("problem+json errors", () => {
  it("keeps the detail, type and the request id of the body", () => {
    const e = problemToError(
      404,
      { type: "https://nexus.dev/problems/not-found", title: "Not Found", status: 404, detail: "no VM vm_1", request_id: "rid-1" },
      headers({ "x-request-id": "rid-header" }),
    );
    expect(e).toBeInstanceOf(ApiError);
    expect(e.detail).toBe("no VM vm_1");
    expect(e.type).toBe("https://nexus.dev/problems/not-found");
    expect(e.requestId).toBe("rid-1");
    expect(describeError(e).message).toBe("no VM vm_1 (request rid-1)");
  });

  it("falls back to the X-Request-ID header and lists validation errors", () => {
    const e = problemToError(422, { title: "Unprocessable", errors: [{ loc: "body.name", msg: "too short" }] }, headers({ "x-request-id": "rid-2" }));
    expect(e.detail).toBe("body.name: too short");
    expect(e.requestId).toBe("rid-2");
  });

  it("says when to retry after a rate limit", () => {
    const e = problemToError(429, { detail: "too many login attempts" }, headers({ "retry-after": "30" }));
    expect(e.rateLimited).toBe(true);
    expect(e.retryAfter).toBe(30);
    expect(describeError(e).message).toContain("Try again in 30 s.");
  });

  it("copes with a body that is not JSON (a proxy's page)", async () => {
    const res = new Response("<html>Bad gateway</html>", { status: 502, headers: { "X-Request-ID": "r3" } });
    const e = await responseToError(res);
    expect(e.status).toBe(502);
    expect(e.detail).toContain("Bad gateway");
    expect(e.requestId).toBe("r3");
  });
});
