import { describe, expect, it } from "vitest";
import { notificationToast } from "./notify";

describe("live notifications", () => {
  it("toast what needs attention, in red when something failed", () => {
    expect(notificationToast({ kind: "vm_stopped_unexpectedly", title: "VM web stopped unexpectedly", body: "It was meant to be running." })).toEqual({
      title: "VM web stopped unexpectedly",
      message: "It was meant to be running.",
      color: "blue",
      autoClose: 8000,
    });
    expect(notificationToast({ kind: "operation_failed", title: "Operation vm.create failed", body: "no host" })?.color).toBe("red");
    expect(notificationToast({ kind: "alert", title: "DiskFull", body: "DiskFull" })?.message).toBe("");
  });
  it("leave a succeeded operation to the bell", () => {
    expect(notificationToast({ kind: "operation_succeeded", title: "Operation vm.create succeeded" })).toBeNull();
  });
});
