// API tokens, audit log, operations, events, my quota, notification centre.
import {
  ActionIcon,
  Alert,
  Badge,
  Button,
  Code,
  CopyButton,
  Group,
  Loader,
  Modal,
  MultiSelect,
  Paper,
  Progress,
  Select,
  Stack,
  Switch,
  Table,
  Text,
  TextInput,
  Title,
  Tooltip,
} from "@mantine/core";
import { useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { api } from "../api/session";
import type { ApiTokenCreated, Notification, NotificationPrefs, Schema } from "../api/types";
import { useAuth } from "../auth";
import { cell } from "../components/bits";
import { GuardedButton } from "../components/Guarded";
import { confirmThen, ErrorAlert, usePaged, type Row } from "../components/resource";
import { SchemaForm } from "../components/SchemaForm";
import { toastError, toastOk } from "../notify";
import { QuotaBars } from "../resources";

export function Tokens() {
  const auth = useAuth();
  const qc = useQueryClient();
  const q = usePaged<Schema<"ApiTokenRead">>("/v1/auth/tokens");
  const [open, setOpen] = useState(false);
  const [created, setCreated] = useState<ApiTokenCreated | null>(null);
  const rows = q.data?.pages.flatMap((p) => p.items) ?? [];
  const refresh = () => void qc.invalidateQueries({ queryKey: ["/v1/auth/tokens"] });
  return (
    <Stack>
      <Group justify="space-between">
        <Title order={2}>API tokens</Title>
        <GuardedButton verdict={auth.can("read")} onClick={() => setOpen(true)}>
          Create token
        </GuardedButton>
      </Group>
      <Modal opened={open} onClose={() => setOpen(false)} title="Create an API token" size="lg">
        <SchemaForm
          schema="ApiTokenCreate"
          primary={["scopes", "expires_in_days"]}
          submitLabel="Create"
          onSubmit={async (body) => {
            try {
              setCreated(await api<ApiTokenCreated>("/v1/auth/tokens", { method: "POST", body }));
              setOpen(false);
              refresh();
            } catch (e) {
              toastError(e);
            }
          }}
        />
      </Modal>
      <Modal opened={created !== null} onClose={() => setCreated(null)} title="Your new token" size="lg">
        {created && (
          <Stack>
            <Alert color="yellow">Copy it now: it is shown once and never again.</Alert>
            <Group wrap="nowrap">
              <Code data-testid="token-secret" style={{ wordBreak: "break-all" }}>
                {created.token}
              </Code>
              <CopyButton value={created.token}>
                {({ copied, copy }) => (
                  <Button size="xs" onClick={copy} color={copied ? "teal" : "blue"}>
                    {copied ? "Copied" : "Copy"}
                  </Button>
                )}
              </CopyButton>
            </Group>
            <Button onClick={() => setCreated(null)}>Done</Button>
          </Stack>
        )}
      </Modal>
      {q.error ? <ErrorAlert error={q.error} /> : null}
      {q.isLoading ? <Loader /> : rows.length === 0 ? (
        <Paper withBorder p="xl"><Text c="dimmed">No API tokens: create one for scripts and CI (`nexus` CLI, SDK, curl).</Text></Paper>
      ) : (
        <Table striped>
          <Table.Thead>
            <Table.Tr>
              {["Name", "Prefix", "Scopes", "Created", "Expires", "Last used", "Status", ""].map((h) => <Table.Th key={h}>{h}</Table.Th>)}
            </Table.Tr>
          </Table.Thead>
          <Table.Tbody>
            {rows.map((t) => (
              <Table.Tr key={t.id}>
                <Table.Td>{t.name}</Table.Td>
                <Table.Td><Code>{t.prefix}</Code></Table.Td>
                <Table.Td>{t.scopes.join(", ")}</Table.Td>
                <Table.Td>{cell("created_at", t.created_at)}</Table.Td>
                <Table.Td>{cell("expires_at", t.expires_at)}</Table.Td>
                <Table.Td>{cell("last_used_at", t.last_used_at)}</Table.Td>
                <Table.Td>{t.revoked_at ? <Badge color="gray">revoked</Badge> : <Badge color="green">active</Badge>}</Table.Td>
                <Table.Td>
                  {!t.revoked_at && (
                    <Button
                      size="compact-xs"
                      color="red"
                      variant="light"
                      onClick={() =>
                        confirmThen(`Revoke token ${t.name}? Anything using it stops working.`, "Revoke", () =>
                          void api(`/v1/auth/tokens/${encodeURIComponent(t.id)}`, { method: "DELETE" })
                            .then(() => (toastOk(`token ${t.name} revoked`), refresh()))
                            .catch(toastError),
                        )
                      }
                    >
                      Revoke
                    </Button>
                  )}
                </Table.Td>
              </Table.Tr>
            ))}
          </Table.Tbody>
        </Table>
      )}
    </Stack>
  );
}

// a table wider than the page scrolls; the keyboard can scroll it too (a Tab stop)
const SCROLL_KEYS = { viewportProps: { tabIndex: 0 } };

function PagedTable({ path, query, columns, empty }: { path: string; query: Record<string, string | undefined>; columns: { key: string; label: string; render?: (r: Row) => React.ReactNode }[]; empty: string }) {
  const q = usePaged(path, query);
  const rows = q.data?.pages.flatMap((p) => p.items) ?? [];
  return (
    <Stack>
      {q.error ? <ErrorAlert error={q.error} /> : null}
      {q.isLoading ? <Loader /> : rows.length === 0 ? (
        <Paper withBorder p="xl"><Text c="dimmed">{empty}</Text></Paper>
      ) : (
        <Table.ScrollContainer minWidth={900} scrollAreaProps={SCROLL_KEYS}>
          <Table striped>
            <Table.Thead>
              <Table.Tr>{columns.map((c) => <Table.Th key={c.key}>{c.label}</Table.Th>)}</Table.Tr>
            </Table.Thead>
            <Table.Tbody>
              {rows.map((r, i) => (
                <Table.Tr key={String(r.id ?? i)}>
                  {columns.map((c) => <Table.Td key={c.key}>{c.render ? c.render(r) : cell(c.key, r[c.key])}</Table.Td>)}
                </Table.Tr>
              ))}
            </Table.Tbody>
          </Table>
        </Table.ScrollContainer>
      )}
      {q.hasNextPage && (
        <Button variant="subtle" onClick={() => void q.fetchNextPage()} loading={q.isFetchingNextPage}>
          Load more
        </Button>
      )}
    </Stack>
  );
}

export function Audit() {
  const [f, setF] = useState<Record<string, string | undefined>>({});
  const set = (k: string) => (v: string | null) => setF((o) => ({ ...o, [k]: v || undefined }));
  return (
    <Stack>
      <Title order={2}>Audit log</Title>
      <Group>
        <TextInput aria-label="Actor" placeholder="Actor (user id or name)" onChange={(e) => set("actor")(e.currentTarget.value)} />
        <TextInput aria-label="Action" placeholder="Action (e.g. vm.create)" onChange={(e) => set("action")(e.currentTarget.value)} />
        <TextInput aria-label="Resource type" placeholder="Resource type (vm)" onChange={(e) => set("resource_type")(e.currentTarget.value)} />
        <Select aria-label="Outcome" placeholder="Outcome" clearable data={["success", "denied", "error"]} onChange={set("outcome")} />
      </Group>
      <PagedTable
        path="/v1/audit"
        query={f}
        empty="No audit entries match."
        columns={[
          { key: "at", label: "At", render: (r) => cell("at_at", r.at) },
          { key: "actor_username", label: "Actor" },
          { key: "action", label: "Action" },
          { key: "resource_type", label: "Type" },
          { key: "resource_id", label: "Resource" },
          { key: "outcome", label: "Outcome", render: (r) => cell("status", r.outcome) },
          { key: "source_ip", label: "Source" },
          { key: "request_id", label: "Request" },
        ]}
      />
    </Stack>
  );
}

export function Operations() {
  const [status, setStatus] = useState<string | null>(null);
  const q = useQuery({
    queryKey: ["/v1/operations", status],
    queryFn: () => api<{ items: Schema<"OperationRead">[] }>("/v1/operations", { query: { status, limit: 100 } }),
    refetchInterval: 3_000, // live progress
  });
  const qc = useQueryClient();
  return (
    <Stack>
      <Group justify="space-between">
        <Title order={2}>Operations</Title>
        <Select aria-label="Status" placeholder="Status" clearable data={["pending", "running", "succeeded", "failed", "cancelled"]} value={status} onChange={setStatus} />
      </Group>
      {q.error ? <ErrorAlert error={q.error} /> : null}
      {q.isLoading ? <Loader /> : !q.data?.items.length ? (
        <Paper withBorder p="xl"><Text c="dimmed">No operations: long-running actions (create, delete, snapshot, build) show their progress here.</Text></Paper>
      ) : (
        <Table striped>
          <Table.Thead>
            <Table.Tr>{["Kind", "Resource", "Status", "Progress", "Message", "Created", ""].map((h) => <Table.Th key={h}>{h}</Table.Th>)}</Table.Tr>
          </Table.Thead>
          <Table.Tbody>
            {q.data.items.map((o) => (
              <Table.Tr key={o.id}>
                <Table.Td>{o.kind}</Table.Td>
                <Table.Td>{o.resource_id ?? "—"}</Table.Td>
                <Table.Td>{cell("status", o.status)}</Table.Td>
                <Table.Td w={160}><Progress value={o.progress} aria-label={`progress ${o.progress}%`} /></Table.Td>
                <Table.Td>{o.error ?? o.message ?? ""}</Table.Td>
                <Table.Td>{cell("created_at", o.created_at)}</Table.Td>
                <Table.Td>
                  {(o.status === "pending" || o.status === "running") && (
                    <Button size="compact-xs" variant="light" color="red" onClick={() => void api(`/v1/operations/${o.id}/cancel`, { method: "POST" }).then(() => qc.invalidateQueries({ queryKey: ["/v1/operations"] })).catch(toastError)}>
                      Cancel
                    </Button>
                  )}
                </Table.Td>
              </Table.Tr>
            ))}
          </Table.Tbody>
        </Table>
      )}
    </Stack>
  );
}

export function Events() {
  const [type, setType] = useState<string>("");
  return (
    <Stack>
      <Title order={2}>Events</Title>
      <TextInput aria-label="Event type" placeholder="Type pattern, e.g. vm.* or *.failed" value={type} onChange={(e) => setType(e.currentTarget.value)} w={320} />
      <PagedTable
        path="/v1/events"
        query={{ type: type || undefined }}
        empty="No events yet: they appear as resources change."
        columns={[
          { key: "at", label: "At", render: (r) => cell("at_at", r.at) },
          { key: "type", label: "Type" },
          { key: "resource_name", label: "Resource", render: (r) => String(r.resource_name ?? r.resource_id ?? "—") },
          { key: "actor_username", label: "Actor" },
        ]}
      />
    </Stack>
  );
}

export function MyQuota() {
  const q = useQuery({ queryKey: ["/v1/quotas/me"], queryFn: () => api<Schema<"QuotaRead">>("/v1/quotas/me") });
  return (
    <Stack maw={720}>
      <Title order={2}>My quota</Title>
      {q.error ? <ErrorAlert error={q.error} /> : null}
      {q.data && (
        <Paper withBorder p="lg">
          <Text mb="sm">
            {q.data.username} ({q.data.role}); admins set quotas per user under Users → a user → Quota.
          </Text>
          <QuotaBars q={q.data} />
        </Paper>
      )}
    </Stack>
  );
}

export function NotificationList({ compact }: { compact?: boolean }) {
  const qc = useQueryClient();
  const [unread, setUnread] = useState(false);
  const q = useQuery({
    queryKey: ["/v1/notifications", unread],
    queryFn: () => api<{ items: Notification[] }>("/v1/notifications", { query: { unread: unread || undefined, limit: compact ? 10 : 100 } }),
  });
  const refresh = () => {
    void qc.invalidateQueries({ queryKey: ["/v1/notifications"] });
    void qc.invalidateQueries({ queryKey: ["/v1/notifications/summary"] });
  };
  const mark = (n: Notification, read: boolean) =>
    void api(`/v1/notifications/${encodeURIComponent(n.id)}`, { method: "PATCH", body: { read } }).then(refresh).catch(toastError);
  return (
    <Stack gap="xs">
      <Group justify="space-between">
        <Switch size="xs" label="Unread only" checked={unread} onChange={(e) => setUnread(e.currentTarget.checked)} />
        <Button size="compact-xs" variant="subtle" onClick={() => void api("/v1/notifications/read-all", { method: "POST" }).then(refresh).catch(toastError)}>
          Mark all read
        </Button>
      </Group>
      {q.error ? <ErrorAlert error={q.error} /> : null}
      {q.data?.items.length === 0 && <Text size="sm" c="dimmed">No notifications. You are told here when a VM fails or stops unexpectedly, an operation ends, a schedule or webhook is disabled.</Text>}
      {q.data?.items.map((n) => (
        <Paper key={n.id} withBorder p="xs" data-testid="notification" bg={n.read_at ? undefined : "var(--mantine-color-blue-light)"}>
          <Group justify="space-between" wrap="nowrap" align="flex-start">
            <div>
              <Text size="sm" fw={n.read_at ? 400 : 600}>{n.title}</Text>
              {n.body && <Text size="xs" c="dimmed" lineClamp={compact ? 2 : undefined}>{n.body}</Text>}
              <Text size="xs" c="dimmed">{cell("created_at", n.created_at)}</Text>
            </div>
            <Tooltip label={n.read_at ? "Mark unread" : "Mark read"}>
              <ActionIcon variant="subtle" aria-label={n.read_at ? "Mark unread" : "Mark read"} onClick={() => mark(n, !n.read_at)}>
                {n.read_at ? "○" : "●"}
              </ActionIcon>
            </Tooltip>
          </Group>
        </Paper>
      ))}
    </Stack>
  );
}

export function NotificationsPage() {
  const qc = useQueryClient();
  const prefs = useQuery({ queryKey: ["/v1/notifications/preferences"], queryFn: () => api<NotificationPrefs>("/v1/notifications/preferences") });
  const save = (body: Partial<NotificationPrefs>) =>
    void api("/v1/notifications/preferences", { method: "PUT", body })
      .then(() => (toastOk("preferences saved"), qc.invalidateQueries({ queryKey: ["/v1/notifications/preferences"] })))
      .catch(toastError);
  return (
    <Stack maw={900}>
      <Title order={2}>Notifications</Title>
      <Paper withBorder p="md">
        <Title order={4} mb="xs">Preferences</Title>
        {prefs.error ? <ErrorAlert error={prefs.error} /> : null}
        {prefs.data && (
          <Stack>
            <Switch label="Mute all notifications" checked={prefs.data.muted} onChange={(e) => save({ muted: e.currentTarget.checked })} />
            <MultiSelect
              label="Kinds I do not want"
              data={prefs.data.kinds}
              value={prefs.data.disabled_kinds}
              onChange={(v) => save({ disabled_kinds: v as NotificationPrefs["disabled_kinds"] })}
            />
          </Stack>
        )}
      </Paper>
      <NotificationList />
    </Stack>
  );
}
