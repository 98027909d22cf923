// Cluster at a glance: capacity and VM counts from the hosts, host health, recent activity
// (events), quick actions.
import { Badge, Button, Card, Group, Paper, Progress, SimpleGrid, Stack, Table, Text, Title, Tooltip } from "@mantine/core";
import { useQuery } from "@tanstack/react-query";
import { Link, useNavigate } from "react-router-dom";
import { api } from "../api/session";
import type { EventRead, Host, Page, Vm } from "../api/types";
import { useAuth } from "../auth";
import { when } from "../components/bits";
import { GuardedButton } from "../components/Guarded";
import { ErrorAlert } from "../components/resource";
import { FromTemplateButton } from "./Vms";

function Stat({ label, value, sub, pct }: { label: string; value: string; sub?: string; pct?: number }) {
  return (
    <Card withBorder>
      <Text size="xs" c="dimmed" tt="uppercase">{label}</Text>
      <Text fw={700} size="xl">{value}</Text>
      {sub && <Text size="xs" c="dimmed">{sub}</Text>}
      {pct !== undefined && <Progress mt="xs" value={pct} aria-label={`${label} used`} color={pct > 90 ? "red" : pct > 70 ? "yellow" : "blue"} />}
    </Card>
  );
}

export function Dashboard() {
  const auth = useAuth();
  const nav = useNavigate();
  const hosts = useQuery({ queryKey: ["/v1/hosts", "dash"], queryFn: () => api<Page<Host>>("/v1/hosts", { query: { limit: 200 } }), refetchInterval: 15_000 });
  const vms = useQuery({ queryKey: ["/v1/vms", "dash"], queryFn: () => api<Page<Vm>>("/v1/vms", { query: { limit: 500 } }), refetchInterval: 15_000 });
  const events = useQuery({ queryKey: ["/v1/events", "dash"], queryFn: () => api<Page<EventRead>>("/v1/events", { query: { limit: 15 } }), refetchInterval: 15_000 });
  const hs = hosts.data?.items ?? [];
  const vcpus = hs.reduce((a, h) => a + h.vcpus, 0);
  const usedV = hs.reduce((a, h) => a + (h.allocated_vcpus ?? 0), 0);
  const mem = hs.reduce((a, h) => a + h.memory_mib, 0);
  const usedM = hs.reduce((a, h) => a + (h.allocated_memory_mib ?? 0), 0);
  const vmList = vms.data?.items ?? [];
  const running = vmList.filter((v) => v.state === "running").length;
  const failed = vmList.filter((v) => v.state === "failed").length;
  return (
    <Stack>
      <Group justify="space-between">
        <Title order={2}>Dashboard</Title>
        <Group>
          <FromTemplateButton onCreated={(vmId) => nav(`/vms/${vmId}`)} />
          <GuardedButton variant="outline" verdict={auth.can("create")} onClick={() => nav("/containers")}>Deploy a container</GuardedButton>
          <GuardedButton variant="outline" verdict={auth.can("create")} onClick={() => nav("/functions")}>Create a function</GuardedButton>
        </Group>
      </Group>
      {hosts.error ? <ErrorAlert error={hosts.error} /> : null}
      <SimpleGrid cols={4}>
        <Stat label="VMs" value={String(vmList.length)} sub={`${running} running · ${failed} failed`} />
        <Stat label="Hosts" value={String(hs.length)} sub={`${hs.filter((h) => h.status === "healthy").length} healthy`} />
        <Stat label="vCPUs allocated" value={`${usedV} / ${vcpus}`} pct={vcpus ? (usedV / vcpus) * 100 : 0} />
        <Stat label="Memory allocated" value={`${Math.round(usedM / 1024)} / ${Math.round(mem / 1024)} GiB`} pct={mem ? (usedM / mem) * 100 : 0} />
      </SimpleGrid>
      <SimpleGrid cols={2}>
        <Paper withBorder p="md">
          <Title order={4} mb="sm">Host health</Title>
          {hs.length === 0 && <Text c="dimmed" size="sm">No hosts registered yet.</Text>}
          <Group gap="xs">
            {hs.map((h) => (
              <Tooltip key={h.id} label={`${h.name}: ${h.status}${h.drained ? ", drained" : ""}; ${h.vm_count ?? 0} VMs; ${h.accel}`}>
                <Badge component={Link} to={`/hosts/${h.id}`} size="lg" color={h.status === "healthy" ? (h.drained ? "yellow" : "green") : "red"} style={{ cursor: "pointer" }}>
                  {h.name}
                </Badge>
              </Tooltip>
            ))}
          </Group>
        </Paper>
        <Paper withBorder p="md">
          <Group justify="space-between" mb="sm">
            <Title order={4}>Recent activity</Title>
            <Button component={Link} to="/events" variant="subtle" size="compact-sm">All events</Button>
          </Group>
          {events.error ? <ErrorAlert error={events.error} /> : null}
          {events.data?.items.length === 0 && <Text c="dimmed" size="sm">Nothing has happened yet.</Text>}
          {/* fixed layout: long names end in an ellipsis (the whole text in a tooltip) instead of
              widening the card past the page */}
          <Table layout="fixed">
            <Table.Tbody>
              {(events.data?.items ?? []).map((e) => {
                const what = e.resource_name ?? e.resource_id ?? "";
                const who = e.actor_username ?? "system";
                return (
                  <Table.Tr key={e.id}>
                    <Table.Td w="22%"><Text size="xs" truncate="end" title={when(e.at)}>{new Date(e.at).toLocaleTimeString()}</Text></Table.Td>
                    <Table.Td w="34%"><Text size="xs" ff="monospace" truncate="end" title={e.type} c={e.type.endsWith("failed") ? "red" : undefined}>{e.type}</Text></Table.Td>
                    <Table.Td><Text size="sm" truncate="end" title={what}>{what}</Text></Table.Td>
                    <Table.Td w="14%"><Text size="xs" c="dimmed" truncate="end" title={who}>{who}</Text></Table.Td>
                  </Table.Tr>
                );
              })}
            </Table.Tbody>
          </Table>
        </Paper>
      </SimpleGrid>
    </Stack>
  );
}
