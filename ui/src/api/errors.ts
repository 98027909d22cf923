// Errors of the API: RFC 9457 problem+json with the request id (also the X-Request-ID header).
import type { Problem } from "./types";

export const REQUEST_ID_HEADER = "X-Request-ID";

/** A failed API call: the server's problem detail, the request id, the retry hint. */
export class ApiError extends Error {
  readonly status: number;
  readonly detail: string;
  readonly type: string;
  readonly title: string;
  readonly requestId: string | null;
  readonly retryAfter: number | null;
  readonly problem: Partial<Problem> | null;

  constructor(init: {
    status: number;
    detail: string;
    type?: string;
    title?: string;
    requestId?: string | null;
    retryAfter?: number | null;
    problem?: Partial<Problem> | null;
  }) {
    super(init.detail);
    this.name = "ApiError";
    this.status = init.status;
    this.detail = init.detail;
    this.type = init.type ?? "about:blank";
    this.title = init.title ?? statusTitle(init.status);
    this.requestId = init.requestId ?? null;
    this.retryAfter = init.retryAfter ?? null;
    this.problem = init.problem ?? null;
  }

  get rateLimited(): boolean {
    return this.status === 429;
  }
}

function statusTitle(status: number): string {
  if (status === 0) return "Network error";
  if (status === 401) return "Unauthorized";
  if (status === 403) return "Forbidden";
  if (status === 404) return "Not found";
  if (status === 429) return "Too many requests";
  return status >= 500 ? "Server error" : "Request failed";
}

/** The ApiError for a problem body (or anything else a server or proxy may answer). */
export function problemToError(
  status: number,
  body: unknown,
  headers: { get(name: string): string | null },
): ApiError {
  const rid = headers.get(REQUEST_ID_HEADER);
  const retryHeader = headers.get("Retry-After");
  const retryAfter = retryHeader !== null && /^\d+$/.test(retryHeader) ? Number(retryHeader) : null;
  if (body && typeof body === "object" && !Array.isArray(body)) {
    const p = body as Partial<Problem> & Record<string, unknown>;
    let detail = typeof p.detail === "string" && p.detail ? p.detail : "";
    if (!detail && Array.isArray(p.errors) && p.errors.length) {
      detail = p.errors.map((e) => `${e.loc}: ${e.msg}`).join("; ");
    }
    return new ApiError({
      status,
      detail: detail || (typeof p.title === "string" ? p.title : statusTitle(status)),
      type: typeof p.type === "string" ? p.type : undefined,
      title: typeof p.title === "string" ? p.title : undefined,
      requestId: (typeof p.request_id === "string" ? p.request_id : null) ?? rid,
      retryAfter,
      problem: p,
    });
  }
  const text = typeof body === "string" && body.trim() ? body.trim().slice(0, 300) : statusTitle(status);
  return new ApiError({ status, detail: text, requestId: rid, retryAfter });
}

/** Read a failed Response into an ApiError. */
export async function responseToError(res: Response): Promise<ApiError> {
  const text = await res.text().catch(() => "");
  let body: unknown = text;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    /* not JSON: kept as text */
  }
  return problemToError(res.status, body, res.headers);
}

/** One line for a toast: the detail, then the request id to quote in a report. */
export function describeError(err: unknown): { title: string; message: string } {
  if (err instanceof ApiError) {
    const wait = err.rateLimited && err.retryAfter !== null ? ` Try again in ${err.retryAfter} s.` : "";
    const rid = err.requestId ? ` (request ${err.requestId})` : "";
    return { title: `${err.title} (${err.status})`, message: `${err.detail}${wait}${rid}` };
  }
  return { title: "Error", message: err instanceof Error ? err.message : String(err) };
}
