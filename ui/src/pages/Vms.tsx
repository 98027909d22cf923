// VMs: the list (generic, with state filter, search, "my resources", bulk stop/delete) and a
// detail page with lifecycle actions, clone, snapshots, port forwards, volumes, metrics
// history, the boot console and an interactive terminal.
import {
  Anchor,
  Button,
  Code,
  Group,
  Loader,
  Modal,
  Select,
  Stack,
  Tabs,
  Text,
  Title,
} from "@mantine/core";
import { useQuery, useQueryClient } from "@tanstack/react-query";
import { lazy, Suspense, useState } from "react";
import { Link, useNavigate, useParams } from "react-router-dom";
import { api } from "../api/session";
import type { Operation, Page, Template, Vm } from "../api/types";
import { useAuth } from "../auth";
import { StateBadge } from "../components/bits";
import { GuardedButton } from "../components/Guarded";
import {
  ActionButtons,
  ErrorAlert,
  Fields,
  FormButton,
  ResourceList,
  SubList,
  type ResourceDef,
  type Row,
} from "../components/resource";
import { SchemaForm } from "../components/SchemaForm";
import { toastError, toastOk } from "../notify";
import { VM_STATES } from "../resources";
import { watchOperation } from "../components/OperationToast";
import { VmTerminal } from "./LazyTerminal";

// the charts (recharts) in their own chunk: loaded when the Metrics tab is opened
const MetricsTab = lazy(() => import("./VmMetrics").then((m) => ({ default: m.MetricsTab })));

const enc = encodeURIComponent;

/** The VM an answer names: a VM (200, when waited for) or the operation making it (202). */
export function vmIdOf(r: Vm | Operation): string {
  return "kind" in r && "status" in r ? String(r.resource_id ?? "") : r.id;
}
const vmAction = (verb: string) => (r: Row) => api(`/v1/vms/${enc(String(r.id))}/${verb}`, { method: "POST" });

export const VM_DEF: ResourceDef = {
  key: "vms",
  title: "VMs",
  singular: "VM",
  listPath: "/v1/vms",
  columns: [
    { key: "name", label: "Name" },
    { key: "state", label: "State" },
    { key: "vcpus", label: "vCPUs" },
    { key: "memory_mib", label: "Memory (MiB)" },
    { key: "image_id", label: "Image" },
    { key: "host_id", label: "Host" },
    { key: "created_at", label: "Created" },
  ],
  filters: [{ param: "state", label: "State", options: VM_STATES }],
  server: { search: "q", mine: "owner" }, // GET /v1/vms?q=&owner=
  create: { schema: "VmCreate", need: "create", primary: ["image", "vcpus", "memory_mib"], label: "Create VM" },
  actions: [
    { label: "Start", need: "modify", when: (r) => ["stopped", "failed"].includes(String(r.state)), run: vmAction("start") },
    { label: "Stop", need: "modify", bulk: true, when: (r) => r.state === "running", run: vmAction("stop") },
    { label: "Reboot", need: "modify", when: (r) => r.state === "running", run: vmAction("reboot") },
    { label: "Pause", need: "modify", when: (r) => r.state === "running", run: vmAction("pause") },
    { label: "Resume", need: "modify", when: (r) => r.state === "paused", run: vmAction("resume") },
  ],
  deletable: "modify",
  empty: "No VMs yet: create one (from the default image or a template).",
};

export function FromTemplateButton({ onCreated }: { onCreated?: (vmId: string) => void }) {
  const auth = useAuth();
  const [open, setOpen] = useState(false);
  const [tpl, setTpl] = useState<string | null>(null);
  const templates = useQuery({
    queryKey: ["/v1/templates", "all"],
    queryFn: () => api<Page<Template>>("/v1/templates", { query: { limit: 200 } }),
    enabled: open,
  });
  return (
    <>
      <GuardedButton variant="outline" verdict={auth.can("create")} onClick={() => setOpen(true)}>
        Create from template
      </GuardedButton>
      <Modal opened={open} onClose={() => setOpen(false)} title="Create a VM from a template" size="lg">
        <Stack>
          <Select
            label="Template"
            required
            placeholder={templates.data?.items.length === 0 ? "No templates yet: create one under Templates" : "Pick one"}
            data={(templates.data?.items ?? []).map((t) => ({ value: t.id, label: t.name }))}
            value={tpl}
            onChange={setTpl}
          />
          {tpl && (
            <SchemaForm
              schema="TemplateInstantiate"
              submitLabel="Create VM"
              onSubmit={async (body) => {
                try {
                  const r = await api<Vm | Operation>(`/v1/templates/${enc(tpl)}/instantiate`, { method: "POST", body });
                  toastOk(`VM ${String(body.name)} is being created`);
                  setOpen(false);
                  onCreated?.(vmIdOf(r));
                } catch (e) {
                  toastError(e);
                }
              }}
            />
          )}
        </Stack>
      </Modal>
    </>
  );
}

export function VmList() {
  const nav = useNavigate();
  const qc = useQueryClient();
  return (
    <ResourceList
      def={VM_DEF}
      extraTop={
        <FromTemplateButton
          onCreated={(vmId) => {
            void qc.invalidateQueries({ queryKey: ["/v1/vms"] });
            nav(`/vms/${vmId}`);
          }}
        />
      }
    />
  );
}

function ConsoleTab({ vm }: { vm: Vm }) {
  const q = useQuery({
    queryKey: [`/v1/vms/${vm.id}/console`],
    queryFn: () => api<string>(`/v1/vms/${enc(vm.id)}/console`, { query: { tail: 300 }, raw: true }),
    refetchInterval: 5_000,
  });
  if (q.error) return <ErrorAlert error={q.error} />;
  return (
    <Code block style={{ maxHeight: 480, overflow: "auto" }} data-testid="boot-console">
      {q.data || "(no console output yet)"}
    </Code>
  );
}

export function VmDetail() {
  const { id = "" } = useParams();
  const nav = useNavigate();
  const qc = useQueryClient();
  const auth = useAuth();
  const q = useQuery({
    queryKey: [`/v1/vms/${id}`],
    queryFn: () => api<Vm>(`/v1/vms/${enc(id)}`),
    refetchInterval: 5_000,
  });
  const vm = q.data;
  const refresh = () => {
    void qc.invalidateQueries({ queryKey: ["/v1/vms"] });
    void qc.invalidateQueries({ queryKey: [`/v1/vms/${id}`] });
  };
  const owner = vm?.created_by_user_id;
  const canShell = auth.can("modify", owner);
  return (
    <Stack>
      <Group justify="space-between" align="flex-end">
        <div>
          <Anchor component={Link} to="/vms" size="sm">
            ← VMs
          </Anchor>
          <Group>
            <Title order={2}>VM {vm?.name ?? id}</Title>
            {vm && <StateBadge value={vm.state} />}
          </Group>
          {vm?.state_reason && <Text size="sm" c="dimmed">{vm.state_reason}</Text>}
        </div>
        {vm && (
          <Group>
            <ActionButtons
              def={VM_DEF}
              row={vm as unknown as Row}
              onDone={() => {
                refresh();
                void q.refetch().then((r) => r.error && nav("/vms"));
              }}
            />
            <FormButton
              label="Clone"
              schema="VmClone"
              verdict={auth.can("create")}
              submit={async (body) => {
                const c = await api<Vm | Operation>(`/v1/vms/${enc(vm.id)}/clone`, { method: "POST", body });
                watchOperation(c);
                refresh();
                nav(`/vms/${vmIdOf(c)}`);
              }}
            />
            <FormButton
              label="Take snapshot"
              schema="SnapshotCreate"
              verdict={auth.can("modify", owner)}
              submit={async (body) => {
                watchOperation(await api(`/v1/vms/${enc(vm.id)}/snapshots`, { method: "POST", body }));
                void qc.invalidateQueries({ predicate: (x) => String(x.queryKey[0]).startsWith("/v1/snapshots") });
              }}
            />
            <FormButton
              label="Edit / resize"
              schema="VmUpdate"
              verdict={auth.can("modify", owner)}
              initial={{ name: vm.name, description: vm.description, labels: vm.labels, vcpus: vm.vcpus, memory_mib: vm.memory_mib }}
              submit={async (body) => {
                await api(`/v1/vms/${enc(vm.id)}`, { method: "PATCH", body });
                refresh();
              }}
            />
          </Group>
        )}
      </Group>
      {q.error ? <ErrorAlert error={q.error} /> : null}
      {q.isLoading && <Loader />}
      {vm && (
        <Tabs defaultValue="overview" keepMounted={false}>
          <Tabs.List>
            <Tabs.Tab value="overview">Overview</Tabs.Tab>
            <Tabs.Tab value="metrics">Metrics</Tabs.Tab>
            <Tabs.Tab value="console">Boot console</Tabs.Tab>
            <Tabs.Tab value="terminal">Terminal</Tabs.Tab>
            <Tabs.Tab value="snapshots">Snapshots</Tabs.Tab>
            <Tabs.Tab value="ports">Port forwards</Tabs.Tab>
            <Tabs.Tab value="volumes">Volumes</Tabs.Tab>
          </Tabs.List>
          <Tabs.Panel value="overview" pt="md">
            <Fields row={vm as unknown as Row} />
          </Tabs.Panel>
          <Tabs.Panel value="metrics" pt="md">
            <Suspense fallback={<Loader aria-label="Loading the charts" />}>
              <MetricsTab vm={vm} />
            </Suspense>
          </Tabs.Panel>
          <Tabs.Panel value="console" pt="md">
            <ConsoleTab vm={vm} />
          </Tabs.Panel>
          <Tabs.Panel value="terminal" pt="md">
            <VmTerminal
              vmId={vm.id}
              disabledReason={
                !canShell.ok ? canShell.reason : vm.state !== "running" ? `The VM is ${vm.state}: start it to open a shell.` : undefined
              }
            />
          </Tabs.Panel>
          <Tabs.Panel value="snapshots" pt="md">
            <SubList
              path={`/v1/snapshots?vm_id=${enc(vm.id)}`}
              empty="No snapshots of this VM: use Take snapshot."
              columns={[
                { key: "name", label: "Name" },
                { key: "kind", label: "Kind" },
                { key: "state", label: "State" },
                { key: "created_at", label: "Created" },
              ]}
            />
          </Tabs.Panel>
          <Tabs.Panel value="ports" pt="md">
            <Stack>
              <Group>
                <FormButton
                  label="Add port forward"
                  schema="PortForwardCreate"
                  verdict={auth.can("modify", owner)}
                  submit={async (body) => {
                    await api(`/v1/vms/${enc(vm.id)}/port-forwards`, { method: "POST", body });
                    void qc.invalidateQueries({ queryKey: [`/v1/vms/${vm.id}/port-forwards`] });
                  }}
                />
              </Group>
              <SubList
                path={`/v1/vms/${vm.id}/port-forwards`}
                empty="No port forwards: forward a host port to a guest port."
                columns={[
                  { key: "host_port", label: "Host port" },
                  { key: "guest_ip", label: "Guest IP" },
                  { key: "guest_port", label: "Guest port" },
                  { key: "protocol", label: "Protocol" },
                ]}
                actions={(pf, done) => (
                  <Button
                    size="compact-xs"
                    color="red"
                    variant="light"
                    onClick={() =>
                      void api(`/v1/vms/${enc(vm.id)}/port-forwards/${enc(String(pf.id))}`, { method: "DELETE" })
                        .then(done)
                        .catch(toastError)
                    }
                  >
                    Remove
                  </Button>
                )}
              />
            </Stack>
          </Tabs.Panel>
          <Tabs.Panel value="volumes" pt="md">
            <Stack>
              <Group>
                <FormButton
                  label="Attach volume"
                  schema="VolumeAttach"
                  verdict={auth.can("modify", owner)}
                  submit={async (body) => {
                    await api(`/v1/vms/${enc(vm.id)}/volumes`, { method: "POST", body });
                    void qc.invalidateQueries({ queryKey: [`/v1/vms/${vm.id}/volumes`] });
                  }}
                />
              </Group>
              <SubList
                path={`/v1/vms/${vm.id}/volumes`}
                empty="No volumes attached: create one under Volumes, then attach it here."
                columns={[
                  { key: "volume_id", label: "Volume" },
                  { key: "device", label: "Device" },
                  { key: "read_only", label: "Read-only" },
                ]}
                actions={(a, done) => (
                  <Button
                    size="compact-xs"
                    color="red"
                    variant="light"
                    onClick={() =>
                      void api(`/v1/vms/${enc(vm.id)}/volumes/${enc(String(a.volume_id))}`, { method: "DELETE" })
                        .then(done)
                        .catch(toastError)
                    }
                  >
                    Detach
                  </Button>
                )}
              />
            </Stack>
          </Tabs.Panel>
        </Tabs>
      )}
    </Stack>
  );
}
