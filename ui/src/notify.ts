import { notifications } from "@mantine/notifications";
import { describeError } from "./api/errors";

/** A toast with the server's problem detail and the request id. */
export function toastError(err: unknown): void {
  const { title, message } = describeError(err);
  notifications.show({ color: "red", title, message, autoClose: 10_000 });
}

export function toastOk(message: string): void {
  notifications.show({ color: "green", title: "Done", message, autoClose: 4_000 });
}
