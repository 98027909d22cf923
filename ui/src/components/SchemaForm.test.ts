import { describe, expect, it } from "vitest";
import { fieldKind, objectValue, schemaFields } from "./SchemaForm";

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
  it("gives an object of plain fields a field each, and sends only what was filled", () => {
    const fn = Object.fromEntries(schemaFields("FunctionCreate").map((f) => [f.name, f]));
    expect(fieldKind(fn.code.schema)).toBe("object");
    expect(fn.code.required).toBe(true);
    expect(objectValue({ source: "def handler(e): return e", zip_base64: "" })).toEqual({ source: "def handler(e): return e" });
    expect(objectValue({ source: "" })).toBeUndefined();
    expect(objectValue(undefined)).toBeUndefined();
    // labels (free-form keys) stay JSON
    const vm = Object.fromEntries(schemaFields("VmCreate").map((f) => [f.name, f]));
    expect(fieldKind(vm.labels.schema)).toBe("json");
  });
});
