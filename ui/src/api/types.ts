// Shapes of the API, from the types generated out of the manager's OpenAPI document
// (src/api/schema.d.ts, made by scripts/build-ui.sh; never written by hand).
import type { components, paths } from "./schema";

export type Schemas = components["schemas"];
export type Schema<N extends keyof Schemas> = Schemas[N];
export type ApiPath = keyof paths;

export type Me = Schema<"Me">;
export type TokenPair = Schema<"TokenPair">;
export type Vm = Schema<"VmRead">;
export type VmState = Vm["state"];
export type Template = Schema<"TemplateRead">;
export type Host = Schema<"HostRead">;
export type EventRead = Schema<"EventRead">;
export type Notification = Schema<"NotificationRead">;
export type NotificationPrefs = Schema<"NotificationPrefsRead">;
export type Operation = Schema<"OperationRead">;
export type ApiTokenCreated = Schema<"ApiTokenCreated">;
export type Role = Me["user"]["role"];
export type Problem = Schema<"Problem">;

/** Every listing of the API: `{items, next_cursor}`. */
export interface Page<T> {
  items: T[];
  next_cursor?: string | null;
}
