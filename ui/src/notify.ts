import { notifications } from "@mantine/notifications";
import { describeError } from "./api/errors";
import type { Notification } from "./api/types";

/** A toast with the server's problem detail and the request id. */
export function toastError(err: unknown): void {
  const { title, message } = describeError(err);
  notifications.show({ color: "red", title, message, autoClose: 10_000 });
}

export function toastOk(message: string): void {
  notifications.show({ color: "green", title: "Done", message, autoClose: 4_000 });
}

/** The toast for a notification that arrived live, or null for one that goes to the bell
 * only: a succeeded operation (the console's own operation toasts already follow what this
 * tab started, and a burst of them would cover the page). */
export function notificationToast(
  n: Partial<Notification>,
): { title: string; message: string; color: string; autoClose: number } | null {
  if (n.kind === "operation_succeeded") return null;
  const title = n.title ?? "Notification";
  const bad = n.kind === "operation_failed" || n.kind === "vm_failed" || n.kind === "webhook_disabled";
  return { title, message: n.body && n.body !== title ? n.body : "", color: bad ? "red" : "blue", autoClose: 8_000 };
}
