import { Badge, Code, Tooltip } from "@mantine/core";
import type { ReactNode } from "react";
import { ownership } from "../rbac";

const STATE_COLORS: Record<string, string> = {
  running: "green", ready: "green", succeeded: "green", active: "green", online: "green", delivered: "green",
  healthy: "green", success: "green", ok: "green",
  pending: "yellow", creating: "yellow", starting: "yellow", stopping: "yellow", deleting: "yellow",
  draining: "yellow", building: "yellow", queued: "yellow", retrying: "yellow",
  paused: "gray", stopped: "gray", cancelled: "gray", disabled: "gray", drained: "gray", offline: "gray",
  failed: "red", error: "red", denied: "red", dead: "red", unreachable: "red",
};

export function StateBadge({ value }: { value: unknown }) {
  const s = String(value ?? "");
  return (
    <Badge color={STATE_COLORS[s] ?? "blue"} variant="light">
      {s || "—"}
    </Badge>
  );
}

export function OwnerBadge({ ownerId, userId }: { ownerId: unknown; userId: string | undefined }) {
  const kind = ownership(typeof ownerId === "string" ? ownerId : null, userId);
  const color = kind === "yours" ? "teal" : kind === "system" ? "gray" : "violet";
  return (
    <Tooltip label={typeof ownerId === "string" ? `owner: ${ownerId}` : "created by the system"}>
      <Badge color={color} variant="outline">
        {kind}
      </Badge>
    </Tooltip>
  );
}

export function when(v: unknown): string {
  if (typeof v !== "string" || !v) return "—";
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? v : d.toLocaleString();
}

/** A cell for any value of an API row. */
export function cell(key: string, v: unknown): ReactNode {
  if (v === null || v === undefined || v === "") return "—";
  if (/(^|_)(state|status)$/.test(key)) return <StateBadge value={v} />;
  if (/_at$/.test(key)) return when(v);
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v === "object") {
    const s = JSON.stringify(v);
    return <Code>{s.length > 80 ? `${s.slice(0, 77)}...` : s}</Code>;
  }
  return String(v);
}
