// A VM's metrics history as charts (recharts via @mantine/charts): a chunk of its own.
import { LineChart } from "@mantine/charts";
import { Loader, SimpleGrid, Text } from "@mantine/core";
import { useQuery } from "@tanstack/react-query";
import { api } from "../api/session";
import type { Schema, Vm } from "../api/types";
import { ErrorAlert } from "../components/resource";

const enc = encodeURIComponent;

export function MetricsTab({ vm }: { vm: Vm }) {
  const hist = useQuery({
    queryKey: [`/v1/vms/${vm.id}/metrics/history`],
    queryFn: () =>
      api<Schema<"MetricsHistory">>(`/v1/vms/${enc(vm.id)}/metrics/history`, {
        query: { step: 10, since: new Date(Date.now() - 3600_000).toISOString() },
      }),
    refetchInterval: 10_000,
  });
  const data = (hist.data?.points ?? []).map((p) => ({
    at: new Date(p.sampled_at).toLocaleTimeString(),
    cpu: p.cpu_percent ?? 0,
    mem: p.mem_used_bytes ? Math.round(p.mem_used_bytes / 1048576) : Math.round((p.rss_bytes ?? 0) / 1048576),
  }));
  if (hist.error) return <ErrorAlert error={hist.error} />;
  if (hist.isLoading) return <Loader />;
  if (!data.length) return <Text c="dimmed">No samples yet: metrics are sampled while the VM runs.</Text>;
  return (
    <SimpleGrid cols={2}>
      <div>
        <Text fw={500}>CPU %</Text>
        <LineChart h={220} data={data} dataKey="at" series={[{ name: "cpu", color: "blue.6" }]} curveType="linear" withDots={false} />
      </div>
      <div>
        <Text fw={500}>Memory (MiB)</Text>
        <LineChart h={220} data={data} dataKey="at" series={[{ name: "mem", color: "teal.6" }]} curveType="linear" withDots={false} />
      </div>
    </SimpleGrid>
  );
}
