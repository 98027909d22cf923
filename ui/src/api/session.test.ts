import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { label } from "../components/SchemaForm";
import { ApiError } from "./errors";
import { accessToken, api, clearSession, setTokens } from "./session";

const json = (status: number, body: unknown, headers: Record<string, string> = {}) =>
  new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json", ...headers } });

describe("api() and the session", () => {
  beforeEach(() => setTokens({ access_token: "old", refresh_token: "r1", token_type: "bearer", expires_in: 900 }));
  afterEach(() => {
    vi.unstubAllGlobals();
    clearSession();
  });

  it("refreshes once on a 401 and retries with the new token", async () => {
    const calls: [string, string | undefined][] = [];
    vi.stubGlobal("fetch", async (url: string, init: RequestInit) => {
      const auth = (init.headers as Record<string, string> | undefined)?.Authorization;
      calls.push([url, auth]);
      if (url === "/v1/auth/refresh") {
        expect(JSON.parse(String(init.body))).toEqual({ refresh_token: "r1" });
        return json(200, { access_token: "new", refresh_token: "r2", token_type: "bearer", expires_in: 900 });
      }
      return auth === "Bearer new" ? json(200, { ok: true }) : json(401, { detail: "token expired" });
    });
    expect(await api("/v1/vms", { query: { state: "running", limit: 5, cursor: null } })).toEqual({ ok: true });
    expect(calls.map((c) => c[0])).toEqual(["/v1/vms?state=running&limit=5", "/v1/auth/refresh", "/v1/vms?state=running&limit=5"]);
    expect(accessToken()).toBe("new");
  });

  it("ends the session when the refresh token is refused, and throws the problem", async () => {
    vi.stubGlobal("fetch", async (url: string) =>
      url === "/v1/auth/refresh" ? json(401, { detail: "refresh token reused" }) : json(401, { detail: "token expired", request_id: "r9" }),
    );
    const err = await api("/v1/vms").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect((err as ApiError).detail).toBe("token expired");
    expect((err as ApiError).requestId).toBe("r9");
    expect(accessToken()).toBeNull();
  });
});

describe("form labels", () => {
  it("spell acronyms and units", () => {
    expect(label("memory_mib")).toBe("Memory MiB");
    expect(label("cidr")).toBe("CIDR");
    expect(label("ttl_s")).toBe("TTL (s)");
  });
});
