// What the signed-in user's role allows, to disable what the API would refuse (the API stays
// the only enforcement). Roles: admin (everything), operator (create; change/delete own),
// viewer (read only).
import type { Role } from "./api/types";

export type Need = "read" | "create" | "modify" | "admin";

export interface Verdict {
  ok: boolean;
  reason: string;
}

const OK: Verdict = { ok: true, reason: "" };

/** May `role` (user `userId`) do `need` on a resource owned by `ownerId`? */
export function can(
  role: Role | null | undefined,
  need: Need,
  opts: { userId?: string | null; ownerId?: string | null } = {},
): Verdict {
  if (!role) return { ok: false, reason: "Sign in first" };
  if (need === "read" || role === "admin") return OK;
  if (need === "admin") return { ok: false, reason: "Only an admin can do this" };
  if (role === "viewer") return { ok: false, reason: "Viewers have read-only access" };
  if (need === "modify" && opts.ownerId && opts.userId && opts.ownerId !== opts.userId) {
    return { ok: false, reason: "Only the owner or an admin can change this" };
  }
  return OK;
}

/** "yours" / "shared" / the owner's id: the ownership badge of a row. */
export function ownership(ownerId: string | null | undefined, userId: string | null | undefined): string {
  if (!ownerId) return "system";
  return ownerId === userId ? "yours" : "other";
}
