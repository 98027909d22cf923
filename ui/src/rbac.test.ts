import { describe, expect, it } from "vitest";
import { can, ownership } from "./rbac";

describe("rbac", () => {
  it("lets a viewer only read", () => {
    expect(can("viewer", "read").ok).toBe(true);
    const v = can("viewer", "create");
    expect(v.ok).toBe(false);
    expect(v.reason).toMatch(/read-only/);
  });
  it("lets an operator create and change only what they own", () => {
    expect(can("operator", "create").ok).toBe(true);
    expect(can("operator", "modify", { userId: "u1", ownerId: "u1" }).ok).toBe(true);
    expect(can("operator", "modify", { userId: "u1", ownerId: "u2" }).ok).toBe(false);
    expect(can("operator", "admin").ok).toBe(false);
  });
  it("lets an admin do everything, and nobody act signed out", () => {
    expect(can("admin", "modify", { userId: "u1", ownerId: "u2" }).ok).toBe(true);
    expect(can("admin", "admin").ok).toBe(true);
    expect(can(null, "read").ok).toBe(false);
  });
  it("badges ownership", () => {
    expect(ownership("u1", "u1")).toBe("yours");
    expect(ownership("u2", "u1")).toBe("other");
    expect(ownership(null, "u1")).toBe("system");
  });
});
