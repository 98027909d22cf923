import { describe, expect, it } from "vitest";
import { fieldKind, schemaFields } from "./SchemaForm";

describe("forms from the OpenAPI request schemas", () => {
  it("reads the fields of VmCreate, with what is required", () => {
    const fields = schemaFields("VmCreate");
    const byName = Object.fromEntries(fields.map((f) => [f.name, f]));
    expect(byName.name.required).toBe(true);
    expect(byName.memory_mib.required).toBe(false);
    expect(fieldKind(byName.name.schema)).toBe("text");
    expect(fieldKind(byName.memory_mib.schema)).toBe("number");
    expect(fieldKind(byName.start.schema)).toBe("bool");
    expect(fieldKind(byName.labels.schema)).toBe("json");
  });
  it("offers enums as choices and string lists as tags", () => {
    const user = Object.fromEntries(schemaFields("UserCreate").map((f) => [f.name, f]));
    expect(fieldKind(user.role.schema)).toBe("enum");
    const token = Object.fromEntries(schemaFields("ApiTokenCreate").map((f) => [f.name, f]));
    expect(fieldKind(token.scopes.schema)).toBe("multi");
  });
});
