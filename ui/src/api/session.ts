// The session: access + refresh tokens (refresh rotates; the access token is renewed before it
// expires and once more on a 401), and `api()`, the one way the UI calls the manager.
import { ApiError, responseToError } from "./errors";
import type { TokenPair } from "./types";

const KEY = "nexus.session";
type Listener = (signedIn: boolean) => void;

interface Stored {
  access: string;
  refresh: string;
  expiresAt: number; // ms since epoch
}

let current: Stored | null = load();
let refreshing: Promise<boolean> | null = null;
let timer: ReturnType<typeof setTimeout> | null = null;
const listeners = new Set<Listener>();

function load(): Stored | null {
  try {
    const raw = globalThis.localStorage?.getItem(KEY);
    return raw ? (JSON.parse(raw) as Stored) : null;
  } catch {
    return null;
  }
}

function save(s: Stored | null): void {
  current = s;
  try {
    if (s) globalThis.localStorage?.setItem(KEY, JSON.stringify(s));
    else globalThis.localStorage?.removeItem(KEY);
  } catch {
    /* private mode: memory only */
  }
  schedule();
  listeners.forEach((l) => l(s !== null));
}

function schedule(): void {
  if (timer) clearTimeout(timer);
  timer = null;
  if (!current || typeof window === "undefined") return;
  // renew a minute before expiry (or halfway through a short lifetime)
  const left = current.expiresAt - Date.now();
  const wait = Math.max(1000, Math.min(left - 60_000, left / 2));
  timer = setTimeout(() => void refresh(), wait);
}

export function onSessionChange(l: Listener): () => void {
  listeners.add(l);
  return () => listeners.delete(l);
}

export function accessToken(): string | null {
  return current?.access ?? null;
}

export function setTokens(pair: TokenPair): void {
  save({
    access: pair.access_token,
    refresh: pair.refresh_token,
    expiresAt: Date.now() + pair.expires_in * 1000,
  });
}

export function clearSession(): void {
  save(null);
}

/** Exchange the refresh token for a new pair (one at a time); false when the session is over. */
export function refresh(): Promise<boolean> {
  if (!current) return Promise.resolve(false);
  if (refreshing) return refreshing;
  const token = current.refresh;
  refreshing = fetch("/v1/auth/refresh", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ refresh_token: token }),
  })
    .then(async (res) => {
      if (!res.ok) {
        if (res.status === 401 || res.status === 403) clearSession();
        return false;
      }
      setTokens((await res.json()) as TokenPair);
      return true;
    })
    .catch(() => false)
    .finally(() => {
      refreshing = null;
    });
  return refreshing;
}

export async function login(username: string, password: string): Promise<void> {
  const res = await fetch("/v1/auth/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username, password }),
  });
  if (!res.ok) throw await responseToError(res);
  setTokens((await res.json()) as TokenPair);
}

export async function logout(): Promise<void> {
  const s = current;
  if (s) {
    await fetch("/v1/auth/logout", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${s.access}` },
      body: JSON.stringify({ refresh_token: s.refresh }),
    }).catch(() => undefined);
  }
  clearSession();
}

export type Query = Record<string, string | number | boolean | null | undefined | string[]>;

export function withQuery(path: string, query?: Query): string {
  if (!query) return path;
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v === undefined || v === null || v === "") continue;
    if (Array.isArray(v)) v.forEach((x) => qs.append(k, x));
    else qs.append(k, String(v));
  }
  const s = qs.toString();
  return s ? `${path}${path.includes("?") ? "&" : "?"}${s}` : path;
}

export interface CallOptions {
  method?: string;
  body?: unknown;
  query?: Query;
  raw?: boolean; // return the text, not JSON
  signal?: AbortSignal;
}

/** The API's successful response itself, as the signed-in user (a streamed body is read by the
 * caller); throws ApiError with the server's problem detail. */
export async function apiResponse(path: string, opts: CallOptions = {}): Promise<Response> {
  const url = withQuery(path, opts.query);
  const send = () => {
    const headers: Record<string, string> = {};
    if (current) headers.Authorization = `Bearer ${current.access}`;
    if (opts.body !== undefined) headers["Content-Type"] = "application/json";
    return fetch(url, {
      method: opts.method ?? "GET",
      headers,
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
      signal: opts.signal,
    });
  };
  let res: Response;
  try {
    res = await send();
    if (res.status === 401 && current && (await refresh())) res = await send();
  } catch (e) {
    if (e instanceof DOMException && e.name === "AbortError") throw e;
    throw new ApiError({ status: 0, detail: `the manager did not answer: ${String(e)}` });
  }
  if (!res.ok) throw await responseToError(res);
  return res;
}

/** Call the API as the signed-in user; throws ApiError with the server's problem detail. */
export async function api<T = unknown>(path: string, opts: CallOptions = {}): Promise<T> {
  const res = await apiResponse(path, opts);
  if (opts.raw) return (await res.text()) as T;
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  return (text ? JSON.parse(text) : undefined) as T;
}

if (typeof window !== "undefined") schedule();
