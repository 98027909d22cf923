// The resources of the API as the generic list/detail pages show them: one small definition
// each (columns, create schema, row actions, detail tabs).
import { Button, Code, Group, Modal, NumberInput, Progress, Stack, Text, Textarea, TextInput } from "@mantine/core";
import { useEffect, useState } from "react";
import { readNdjson } from "./api/ndjson";
import { api, apiResponse } from "./api/session";
import type { Schema } from "./api/types";
import { cell } from "./components/bits";
import { ErrorAlert, SubList, type ResourceDef, type Row } from "./components/resource";
import { toastError, toastOk } from "./notify";

const post = (path: string, body?: unknown, query?: Record<string, string>) =>
  api(path, { method: "POST", body, query });
const enc = encodeURIComponent;

const logText = (l: Schema<"LogLine">) => `${l.time} ${l.stream} ${l.line}`;

/** The container's logs: the last 500 lines, or followed live (the API streams NDJSON until the
 * container stops). */
function ContainerLogs({ row }: { row: Row }) {
  const [lines, setLines] = useState<Schema<"LogLine">[] | null>(null);
  const [err, setErr] = useState<unknown>(null);
  const [following, setFollowing] = useState<AbortController | null>(null);
  const [ended, setEnded] = useState(false);
  const path = `/v1/containers/${enc(String(row.id))}/logs`;
  useEffect(() => () => following?.abort(), [following]);
  const load = async () => {
    try {
      const r = await api<Schema<"ContainerLogs">>(path, { query: { tail: 500 } });
      setLines(r.lines);
      setErr(null);
    } catch (e) {
      setErr(e);
    }
  };
  const follow = async () => {
    const ctrl = new AbortController();
    setFollowing(ctrl);
    setEnded(false);
    setErr(null);
    setLines([]);
    try {
      const res = await apiResponse(path, { query: { follow: true, tail: 500 }, signal: ctrl.signal });
      if (res.body) {
        await readNdjson<Schema<"LogLine">>(res.body, (items) => setLines((old) => [...(old ?? []), ...items].slice(-5000)), ctrl.signal);
      }
      if (!ctrl.signal.aborted) setEnded(true);
    } catch (e) {
      if (!ctrl.signal.aborted) setErr(e);
    } finally {
      setFollowing((cur) => (cur === ctrl ? null : cur));
    }
  };
  return (
    <Stack>
      <Group>
        <Button onClick={() => void load()} disabled={following !== null}>
          Load logs
        </Button>
        {following ? (
          <Button variant="outline" onClick={() => (following.abort(), setFollowing(null))}>
            Stop following
          </Button>
        ) : (
          <Button variant="outline" onClick={() => void follow()}>
            Follow
          </Button>
        )}
        <Text size="sm" c="dimmed" data-testid="logs-status">
          {following ? "following" : ended ? "the container stopped: the stream ended" : ""}
        </Text>
      </Group>
      {err ? <ErrorAlert error={err} /> : null}
      {lines && (
        <Code block style={{ maxHeight: 480, overflow: "auto" }} data-testid="container-logs">
          {lines.length ? lines.map(logText).join("\n") : "(no output yet)"}
        </Code>
      )}
    </Stack>
  );
}

function InvokeConsole({ row }: { row: Row }) {
  const [event, setEvent] = useState('{"name": "world"}');
  const [result, setResult] = useState<Row | null>(null);
  const [busy, setBusy] = useState(false);
  const invoke = async () => {
    let body: unknown;
    try {
      body = JSON.parse(event);
    } catch {
      toastError(new Error("the event is not valid JSON"));
      return;
    }
    setBusy(true);
    try {
      setResult(await api<Row>(`/v1/functions/${enc(String(row.id))}/invoke`, { method: "POST", body: { event: body } }));
    } catch (e) {
      toastError(e);
    } finally {
      setBusy(false);
    }
  };
  return (
    <Stack>
      <Textarea label="Event (JSON)" autosize minRows={3} value={event} onChange={(e) => setEvent(e.currentTarget.value)} styles={{ input: { fontFamily: "monospace" } }} />
      <Group>
        <Button onClick={() => void invoke()} loading={busy}>
          Invoke
        </Button>
      </Group>
      {result && (
        <Code block>{JSON.stringify(result, null, 2)}</Code>
      )}
    </Stack>
  );
}

export function QuotaBars({ q }: { q: Schema<"QuotaRead"> }) {
  return (
    <Stack gap="xs">
      {Object.entries(q.limits).map(([k, limit]) => {
        const used = (q.usage as Record<string, number>)[k] ?? 0;
        const pct = limit <= 0 ? 0 : Math.min(100, (used / limit) * 100);
        return (
          <div key={k}>
            <Group justify="space-between">
              <Text size="sm">{k}</Text>
              <Text size="sm" c="dimmed">
                {used} / {limit < 0 ? "unlimited" : limit === 0 ? "0 (none allowed)" : limit}
              </Text>
            </Group>
            <Progress value={pct} color={pct > 90 ? "red" : pct > 70 ? "yellow" : "blue"} aria-label={`${k} usage`} />
          </div>
        );
      })}
    </Stack>
  );
}

const vmStates = ["pending", "creating", "starting", "running", "paused", "stopping", "stopped", "failed", "deleting"];

export const RESOURCES: ResourceDef[] = [
  {
    key: "containers",
    update: { schema: "ContainerUpdate", need: "modify" },
    title: "Containers",
    singular: "Container",
    listPath: "/v1/containers",
    columns: [
      { key: "name", label: "Name" },
      { key: "state", label: "State" },
      { key: "image_id", label: "Image" },
      { key: "restart_count", label: "Restarts" },
      { key: "created_at", label: "Created" },
    ],
    filters: [{ param: "state", label: "State", options: ["creating", "running", "stopped", "exited", "failed"] }],
    create: { schema: "ContainerCreate", need: "create", label: "Deploy container" },
    actions: [
      { label: "Start", need: "modify", run: (r) => post(`/v1/containers/${enc(String(r.id))}/start`), when: (r) => r.state !== "running" },
      { label: "Stop", need: "modify", bulk: true, run: (r) => post(`/v1/containers/${enc(String(r.id))}/stop`), when: (r) => r.state === "running" },
      { label: "Restart", need: "modify", run: (r) => post(`/v1/containers/${enc(String(r.id))}/restart`) },
    ],
    deletable: "modify",
    tabs: [
      { label: "Logs", render: (r) => <ContainerLogs row={r} /> },
      {
        label: "Terminal",
        render: (r) =>
          r.vm_id ? (
            <Stack>
              <Text size="sm" c="dimmed">
                A shell inside the container (its image's user, root filesystem and environment), in its microVM{" "}
                {String(r.vm_id)}.
              </Text>
              <ShellTerminal
                ticketPath={`/v1/containers/${enc(String(r.id))}/shell/ticket`}
                label="Container terminal"
                disabledReason={r.state !== "running" ? `The container is ${String(r.state)}.` : undefined}
              />
            </Stack>
          ) : (
            <Text c="dimmed">The container has no microVM yet.</Text>
          ),
      },
    ],
    empty: "No containers yet: deploy one from a container image (pull one under Container images first).",
  },
  {
    key: "functions",
    update: { schema: "FunctionUpdate", need: "modify" },
    title: "Functions",
    singular: "Function",
    listPath: "/v1/functions",
    columns: [
      { key: "name", label: "Name" },
      { key: "latest_version", label: "Latest version" },
      { key: "concurrency", label: "Concurrency" },
      { key: "created_at", label: "Created" },
    ],
    create: { schema: "FunctionCreate", need: "create", label: "Create function", query: { wait: "false" } },
    deletable: "modify",
    tabs: [
      { label: "Invoke", render: (r) => <InvokeConsole row={r} /> },
      {
        label: "Aliases",
        render: (r) => <Aliases row={r} />,
      },
      {
        label: "Versions",
        render: (r) => (
          <SubList
            path={`/v1/functions/${enc(String(r.id))}/versions`}
            empty="No versions."
            columns={[
              { key: "version", label: "Version" },
              { key: "runtime", label: "Runtime" },
              { key: "handler", label: "Handler" },
              { key: "state", label: "State" },
              { key: "created_at", label: "Created" },
            ]}
          />
        ),
      },
      {
        label: "Invocations",
        render: (r) => (
          <SubList
            path={`/v1/functions/${enc(String(r.id))}/invocations`}
            empty="Not invoked yet: use the Invoke tab."
            columns={[
              { key: "id", label: "Id" },
              { key: "status", label: "Status" },
              { key: "version", label: "Version" },
              { key: "duration_ms", label: "Duration (ms)" },
              { key: "cold_start", label: "Cold start" },
              { key: "created_at", label: "At" },
            ]}
            actions={(x) => <InvocationLogsButton functionId={String(r.id)} invocationId={String(x.id)} />}
          />
        ),
      },
    ],
    empty: "No functions yet: create one with a handler, then invoke it.",
  },
  {
    key: "images",
    update: { schema: "ImageUpdate", need: "modify" },
    title: "Images",
    singular: "Image",
    listPath: "/v1/images",
    columns: [
      { key: "name", label: "Name" },
      { key: "source", label: "Source" },
      { key: "kernel_version", label: "Kernel" },
      { key: "size_bytes", label: "Size", render: (r) => `${Math.round(Number(r.size_bytes ?? 0) / 1048576)} MiB` },
      { key: "public", label: "Public" },
    ],
    create: { schema: "ImageBuild", need: "create", path: "/v1/images/build", label: "Build image" },
    deletable: "modify",
    empty: "No images: build the default one (Build image) or run `nexus image build default`.",
  },
  {
    key: "container-images",
    title: "Container images",
    singular: "Container image",
    listPath: "/v1/container-images",
    columns: [
      { key: "name", label: "Name" },
      { key: "reference", label: "Reference" },
      { key: "digest", label: "Digest" },
      { key: "size_bytes", label: "Size", render: (r) => `${Math.round(Number(r.size_bytes ?? 0) / 1048576)} MiB` },
    ],
    create: { schema: "ContainerImagePull", need: "create", label: "Pull image" },
    deletable: "modify",
    empty: "No container images: pull one from a registry (Pull image).",
  },
  {
    key: "templates",
    update: { schema: "TemplateUpdate", need: "modify" },
    title: "Templates",
    singular: "Template",
    listPath: "/v1/templates",
    columns: [
      { key: "name", label: "Name" },
      { key: "description", label: "Description" },
      { key: "public", label: "Public" },
      { key: "created_at", label: "Created" },
    ],
    create: { schema: "TemplateCreate", need: "create" },
    deletable: "modify",
    empty: "No templates: save a VM's shape as a template to create VMs from it in one click.",
  },
  {
    key: "snapshots",
    title: "Snapshots",
    singular: "Snapshot",
    listPath: "/v1/snapshots",
    columns: [
      { key: "name", label: "Name" },
      { key: "vm_name", label: "VM" },
      { key: "kind", label: "Kind" },
      { key: "state", label: "State" },
      { key: "created_at", label: "Created" },
    ],
    actions: [
      {
        label: "Restore",
        need: "modify",
        confirm: (r) => `Restore VM ${String(r.vm_name)} to snapshot ${String(r.name)}? Its current disk is replaced.`,
        run: (r) => post(`/v1/snapshots/${enc(String(r.id))}/restore`),
      },
    ],
    deletable: "modify",
    empty: "No snapshots: take one from a VM's page.",
  },
  {
    key: "networks",
    update: { schema: "NetworkUpdate", need: "modify" },
    title: "Networks",
    singular: "Network",
    listPath: "/v1/networks",
    columns: [
      { key: "name", label: "Name" },
      { key: "cidr", label: "CIDR" },
      { key: "gateway", label: "Gateway" },
      { key: "nat", label: "NAT" },
      { key: "isolated", label: "Isolated" },
      { key: "shared", label: "Shared" },
    ],
    create: { schema: "NetworkCreate", need: "create" },
    deletable: "modify",
    empty: "No networks: create one to connect VMs privately.",
  },
  {
    key: "volumes",
    update: { schema: "VolumeUpdate", need: "modify" },
    title: "Volumes",
    singular: "Volume",
    listPath: "/v1/volumes",
    columns: [
      { key: "name", label: "Name" },
      { key: "size_mib", label: "Size (MiB)" },
      { key: "filesystem", label: "Filesystem" },
      { key: "attachment", label: "Attached to" },
    ],
    create: { schema: "VolumeCreate", need: "create" },
    deletable: "modify",
    empty: "No volumes: create one and attach it from a VM's page.",
  },
  {
    key: "hosts",
    title: "Hosts",
    singular: "Host",
    listPath: "/v1/hosts",
    columns: [
      { key: "name", label: "Name" },
      { key: "status", label: "Status" },
      { key: "drained", label: "Drained" },
      { key: "driver", label: "Driver" },
      { key: "accel", label: "Accel" },
      { key: "vm_count", label: "VMs" },
      { key: "last_heartbeat_at", label: "Last heartbeat" },
    ],
    filters: [{ param: "status", label: "Status", options: ["healthy", "draining", "unhealthy"] }],
    mine: false,
    create: { schema: "JoinTokenCreate", need: "admin", path: "/v1/hosts/join-tokens", label: "Add a host (join token)" },
    actions: [
      { label: "Drain", need: "admin", when: (r) => !r.drained, confirm: (r) => `Drain host ${String(r.name)}? No new VMs are placed on it.`, run: (r) => post(`/v1/hosts/${enc(String(r.id))}/drain`) },
      { label: "Undrain", need: "admin", when: (r) => r.drained === true, run: (r) => post(`/v1/hosts/${enc(String(r.id))}/undrain`) },
    ],
    tabs: [
      {
        label: "Metrics",
        render: (r) => <HostMetricsTab id={String(r.id)} />,
      },
    ],
    empty: "No hosts: the embedded agent registers at start, or join one with `nexus host join-token`.",
  },
  {
    key: "schedules",
    update: { schema: "ScheduleUpdate", need: "modify" },
    title: "Schedules",
    singular: "Schedule",
    listPath: "/v1/schedules",
    columns: [
      { key: "name", label: "Name" },
      { key: "action", label: "Action" },
      { key: "resource_id", label: "Resource" },
      { key: "cron", label: "Cron" },
      { key: "enabled", label: "Enabled" },
      { key: "next_run_at", label: "Next run" },
    ],
    create: { schema: "ScheduleCreate", need: "create" },
    actions: [
      { label: "Enable", need: "modify", when: (r) => r.enabled === false, run: (r) => api(`/v1/schedules/${enc(String(r.id))}`, { method: "PATCH", body: { enabled: true } }) },
      { label: "Disable", need: "modify", when: (r) => r.enabled === true, run: (r) => api(`/v1/schedules/${enc(String(r.id))}`, { method: "PATCH", body: { enabled: false } }) },
    ],
    deletable: "modify",
    tabs: [
      {
        label: "Runs",
        render: (r) => (
          <SubList
            path={`/v1/schedules/${enc(String(r.id))}/runs`}
            empty="No runs yet."
            columns={[
              { key: "scheduled_for", label: "Scheduled for", render: (x) => cell("scheduled_at", x.scheduled_for) },
              { key: "status", label: "Status" },
              { key: "missed", label: "Missed" },
              { key: "error", label: "Error" },
            ]}
          />
        ),
      },
    ],
    empty: "No schedules: start, stop or snapshot a VM on a cron schedule.",
  },
  {
    key: "groups",
    update: { schema: "GroupUpdate", need: "modify" },
    title: "Groups",
    singular: "Group",
    listPath: "/v1/groups",
    columns: [
      { key: "name", label: "Name" },
      { key: "desired", label: "Desired" },
      { key: "running", label: "Running" },
      { key: "min", label: "Min" },
      { key: "max", label: "Max" },
    ],
    create: { schema: "GroupCreate", need: "create" },
    actions: [
      {
        label: "Scale +1",
        need: "modify",
        run: (r) => post(`/v1/groups/${enc(String(r.id))}/scale`, { desired: Number(r.desired) + 1 }),
      },
      {
        label: "Scale −1",
        need: "modify",
        when: (r) => Number(r.desired) > Number(r.min),
        run: (r) => post(`/v1/groups/${enc(String(r.id))}/scale`, { desired: Number(r.desired) - 1 }),
      },
    ],
    deletable: "modify",
    empty: "No groups: a group keeps N VMs from a template running and scales them.",
  },
  {
    key: "webhooks",
    update: { schema: "WebhookUpdate", need: "modify" },
    title: "Webhooks",
    singular: "Webhook",
    listPath: "/v1/webhooks",
    columns: [
      { key: "name", label: "Name" },
      { key: "url", label: "URL" },
      { key: "events", label: "Events" },
      { key: "enabled", label: "Enabled" },
      { key: "failing_since", label: "Failing since" },
    ],
    create: { schema: "WebhookCreate", need: "create" },
    actions: [{ label: "Send test", need: "modify", run: (r) => post(`/v1/webhooks/${enc(String(r.id))}/test`) }],
    deletable: "modify",
    tabs: [
      {
        label: "Deliveries",
        render: (r) => (
          <SubList
            path={`/v1/webhooks/${enc(String(r.id))}/deliveries`}
            empty="No deliveries yet: use Send test."
            columns={[
              { key: "event_type", label: "Event" },
              { key: "status", label: "Status" },
              { key: "attempts", label: "Attempts" },
              { key: "last_status_code", label: "HTTP" },
              { key: "last_error", label: "Error" },
              { key: "created_at", label: "At" },
            ]}
            actions={(d, refresh) => (
              <Button
                size="compact-xs"
                variant="light"
                onClick={() =>
                  void post(`/v1/webhooks/${enc(String(r.id))}/deliveries/${enc(String(d.id))}/redeliver`)
                    .then(() => (toastOk("redelivery queued"), refresh()))
                    .catch(toastError)
                }
              >
                Redeliver
              </Button>
            )}
          />
        ),
      },
    ],
    empty: "No webhooks: send signed events to your own endpoint.",
  },
  {
    key: "users",
    update: { schema: "UserUpdate", need: "admin" },
    title: "Users",
    singular: "User",
    listPath: "/v1/users",
    nameOf: (r) => String(r.username),
    columns: [
      { key: "username", label: "Username" },
      { key: "role", label: "Role" },
      { key: "disabled", label: "Disabled" },
      { key: "created_at", label: "Created" },
    ],
    mine: false,
    listNeed: "admin",
    create: { schema: "UserCreate", need: "admin" },
    actions: [
      { label: "Disable", need: "admin", when: (r) => r.disabled === false, run: (r) => api(`/v1/users/${enc(String(r.id))}`, { method: "PATCH", body: { disabled: true } }) },
      { label: "Enable", need: "admin", when: (r) => r.disabled === true, run: (r) => api(`/v1/users/${enc(String(r.id))}`, { method: "PATCH", body: { disabled: false } }) },
    ],
    deletable: "admin",
    tabs: [{ label: "Quota", render: (r) => <UserQuota id={String(r.id)} /> }],
    empty: "Only you so far: create users with a role (admin, operator, viewer).",
  },
];

import { useQuery, useQueryClient } from "@tanstack/react-query";
import { useAuth } from "./auth";
import { GuardedButton } from "./components/Guarded";
import { Fields, FormButton } from "./components/resource";
import { ShellTerminal } from "./pages/LazyTerminal";

function InvocationLogsButton({ functionId, invocationId }: { functionId: string; invocationId: string }) {
  const [logs, setLogs] = useState<string | null>(null);
  const open = () =>
    void api<Schema<"InvocationLogs">>(`/v1/functions/${enc(functionId)}/invocations/${enc(invocationId)}/logs`)
      .then((l) => setLogs(l.logs || "(no output)"))
      .catch(toastError);
  return (
    <>
      <Button size="compact-xs" variant="light" onClick={open}>
        Logs
      </Button>
      <Modal opened={logs !== null} onClose={() => setLogs(null)} title={`Logs of ${invocationId}`} size="xl">
        <Code block style={{ maxHeight: 480, overflow: "auto" }}>
          {logs}
        </Code>
      </Modal>
    </>
  );
}

function Aliases({ row }: { row: Row }) {
  const auth = useAuth();
  const qc = useQueryClient();
  const [alias, setAlias] = useState("");
  const [version, setVersion] = useState<string | number>("");
  const aliases = (row.aliases ?? {}) as Record<string, number>;
  const refresh = () => void qc.invalidateQueries({ predicate: (q) => String(q.queryKey[0]).startsWith("/v1/functions") });
  const verdict = auth.can("modify", row.created_by_user_id as string | undefined);
  return (
    <Stack maw={560}>
      {Object.keys(aliases).length === 0 && <Text c="dimmed">No aliases: point a name (e.g. prod) at a version, then invoke it by alias.</Text>}
      {Object.entries(aliases).map(([name, v]) => (
        <Group key={name} justify="space-between">
          <Text>
            <Code>{name}</Code> → version {v}
          </Text>
          <GuardedButton
            size="compact-xs"
            color="red"
            variant="light"
            verdict={verdict}
            onClick={() => void api(`/v1/functions/${enc(String(row.id))}/aliases/${enc(name)}`, { method: "DELETE" }).then(refresh).catch(toastError)}
          >
            Remove
          </GuardedButton>
        </Group>
      ))}
      <Group align="flex-end">
        <TextInput label="Alias" value={alias} onChange={(e) => setAlias(e.currentTarget.value)} />
        <NumberInput label="Version" min={1} value={version} onChange={setVersion} w={120} />
        <GuardedButton
          verdict={verdict}
          disabled={!alias || version === ""}
          onClick={() =>
            void api(`/v1/functions/${enc(String(row.id))}/aliases/${enc(alias)}`, { method: "PUT", body: { version: Number(version) } })
              .then(() => (toastOk(`alias ${alias} set`), refresh()))
              .catch(toastError)
          }
        >
          Set alias
        </GuardedButton>
      </Group>
    </Stack>
  );
}

function HostMetricsTab({ id }: { id: string }) {
  const q = useQuery({ queryKey: [`/v1/hosts/${id}/metrics`], queryFn: () => api<Row>(`/v1/hosts/${enc(id)}/metrics`), refetchInterval: 10_000 });
  if (q.error) return <ErrorAlert error={q.error} />;
  return q.data ? <Fields row={q.data} /> : null;
}

function UserQuota({ id }: { id: string }) {
  const auth = useAuth();
  const q = useQuery({ queryKey: [`/v1/quotas/${id}`], queryFn: () => api<Schema<"QuotaRead">>(`/v1/quotas/${enc(id)}`) });
  if (q.error) return <ErrorAlert error={q.error} />;
  if (!q.data) return null;
  return (
    <Stack>
      <Group>
        <FormButton
          label="Set quota overrides"
          schema="QuotaUpdate"
          verdict={auth.can("admin")}
          initial={{ limits: q.data.overrides }}
          submit={async (body) => {
            await api(`/v1/quotas/${enc(id)}`, { method: "PUT", body });
            await q.refetch();
          }}
        />
      </Group>
      <QuotaBars q={q.data} />
    </Stack>
  );
}

export const VM_STATES = vmStates;
