import { describe, expect, it } from "vitest";
import type { Operation } from "../api/types";
import { isOperation, operationTitle } from "./OperationToast";

const op = {
  id: "op_01",
  kind: "vm.create",
  status: "running",
  progress: 40,
  message: "booting",
  resource_type: "vm",
  resource_id: "vm_01",
} as unknown as Operation;

describe("operation toasts", () => {
  it("know an operation from a resource", () => {
    expect(isOperation(op)).toBe(true);
    expect(isOperation({ id: "vm_01", name: "web", state: "running" })).toBe(false);
    expect(isOperation({ id: "op_01" })).toBe(false); // not an OperationRead
    expect(isOperation(undefined)).toBe(false);
  });
  it("title one by its kind and resource", () => {
    expect(operationTitle(op)).toBe("vm create (vm_01)");
    expect(operationTitle({ ...op, resource_id: null } as Operation)).toBe("vm create");
  });
});
