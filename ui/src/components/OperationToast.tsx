// Long work (create, delete, build, snapshot, clone) answers 202 with an operation: a toast
// follows it to the end with its progress bar and message, then says how it ended (the error
// in full when it failed). The Operations page lists them all.
import { Progress, Stack, Text } from "@mantine/core";
import { notifications } from "@mantine/notifications";
import { api } from "../api/session";
import type { Operation } from "../api/types";

const DONE = new Set(["succeeded", "failed", "cancelled"]);

/** Whether an API answer is an operation (OperationRead). */
export function isOperation(x: unknown): x is Operation {
  if (!x || typeof x !== "object") return false;
  const o = x as Record<string, unknown>;
  return typeof o.id === "string" && o.id.startsWith("op_") && typeof o.status === "string" && typeof o.progress === "number";
}

export function operationTitle(op: Operation): string {
  const what = op.kind.replace(/[._]/g, " ");
  return op.resource_id ? `${what} (${op.resource_id})` : what;
}

function Body({ op }: { op: Operation }) {
  return (
    <Stack gap={4}>
      <Progress value={op.progress} aria-label={`${operationTitle(op)}: ${op.progress}%`} size="sm" />
      <Text size="xs" c="dimmed">
        {op.progress}%{op.message ? ` · ${op.message}` : ""}
      </Text>
    </Stack>
  );
}

/** Follow `x` (when it is an operation) in a toast until it ends; `onEnd` then runs. */
export function watchOperation(x: unknown, onEnd?: (op: Operation) => void, intervalMs = 1000): void {
  if (!isOperation(x)) return;
  const id = `operation-${x.id}`;
  const title = operationTitle(x);
  notifications.show({ id, loading: true, title, message: <Body op={x} />, autoClose: false });
  void (async () => {
    let op = x;
    while (!DONE.has(op.status)) {
      await new Promise((r) => setTimeout(r, intervalMs));
      try {
        op = await api<Operation>(`/v1/operations/${encodeURIComponent(x.id)}`);
      } catch {
        notifications.hide(id); // signed out, or gone: the Operations page still has it
        return;
      }
      if (!DONE.has(op.status)) notifications.update({ id, loading: true, title, message: <Body op={op} />, autoClose: false });
    }
    const ok = op.status === "succeeded";
    notifications.update({
      id,
      loading: false,
      color: ok ? "green" : op.status === "cancelled" ? "gray" : "red",
      title: `${title}: ${op.status}`,
      message: ok ? (op.message ?? "") : (op.error ?? op.message ?? ""),
      autoClose: ok ? 4_000 : 15_000,
    });
    onEnd?.(op);
  })();
}
