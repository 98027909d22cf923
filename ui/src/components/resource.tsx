// One generic list page and one generic detail page, each driven by a small ResourceDef
// (resources.tsx): paging, search, filters, "my resources", bulk actions, create from the
// API's own request schema, row actions with confirmation, RBAC-aware buttons.
import {
  Alert,
  Anchor,
  Button,
  Checkbox,
  Code,
  CopyButton,
  Group,
  Loader,
  Modal,
  Paper,
  Select,
  Stack,
  Switch,
  Table,
  Tabs,
  Text,
  TextInput,
  Title,
} from "@mantine/core";
import { useDebouncedValue } from "@mantine/hooks";
import { modals } from "@mantine/modals";
import { useInfiniteQuery, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState, type ReactNode } from "react";
import { Link, useNavigate, useParams } from "react-router-dom";
import { describeError } from "../api/errors";
import { api } from "../api/session";
import type { Page, Schemas } from "../api/types";
import { useAuth } from "../auth";
import { toastError, toastOk } from "../notify";
import type { Need } from "../rbac";
import { cell, OwnerBadge } from "./bits";
import { GuardedButton } from "./Guarded";
import { watchOperation } from "./OperationToast";
import { SchemaForm, schemaFields } from "./SchemaForm";

export type Row = Record<string, unknown>;

export interface Column {
  key: string;
  label: string;
  render?: (row: Row) => ReactNode;
}

export interface Action {
  label: string;
  need: Need;
  run: (row: Row) => Promise<unknown>;
  confirm?: (row: Row) => string;
  color?: string;
  bulk?: boolean;
  /** hidden for rows where it makes no sense */
  when?: (row: Row) => boolean;
}

export interface ResourceDef {
  key: string;
  title: string;
  singular: string;
  listPath: string;
  itemPath?: (id: string) => string;
  idOf?: (row: Row) => string;
  nameOf?: (row: Row) => string;
  columns: Column[];
  /** PATCH the item with this schema (an Edit button on the detail page) */
  update?: { schema: keyof Schemas; need: Need; method?: string };
  create?: {
    schema: keyof Schemas;
    need: Need;
    path?: string;
    primary?: string[];
    label?: string;
    query?: Record<string, string>;
  };
  actions?: Action[];
  deletable?: Need;
  filters?: { param: string; label: string; options: string[] }[];
  mine?: boolean;
  /** the list API searches and filters by owner itself: the query parameters for the search
   * box (sent debounced) and for "My resources" (the signed-in user's id); without them the
   * console filters the loaded pages */
  server?: { search?: string; mine?: string };
  tabs?: { label: string; render: (row: Row) => ReactNode }[];
  detail?: boolean;
  empty: string;
  ownerField?: string;
  /** the list needs this role */
  listNeed?: Need;
}

export const idOf = (def: ResourceDef, row: Row) => (def.idOf ? def.idOf(row) : String(row.id));
export const itemPath = (def: ResourceDef, id: string) =>
  def.itemPath ? def.itemPath(id) : `${def.listPath}/${encodeURIComponent(id)}`;
const ownerOf = (def: ResourceDef, row: Row) => row[def.ownerField ?? "created_by_user_id"] as string | undefined;

export function confirmThen(message: string, label: string, run: () => void): void {
  modals.openConfirmModal({
    title: "Are you sure?",
    children: <Text size="sm">{message}</Text>,
    labels: { confirm: label, cancel: "Cancel" },
    confirmProps: { color: "red" },
    onConfirm: run,
  });
}

export function deleteAction(def: ResourceDef): Action {
  return {
    label: "Delete",
    need: def.deletable ?? "modify",
    color: "red",
    bulk: true,
    confirm: (row) => `Delete ${def.singular} ${def.nameOf?.(row) ?? row.name ?? idOf(def, row)}? This cannot be undone.`,
    run: (row) => api(itemPath(def, idOf(def, row)), { method: "DELETE" }),
  };
}

function allActions(def: ResourceDef): Action[] {
  return [...(def.actions ?? []), ...(def.deletable ? [deleteAction(def)] : [])];
}

export function ActionButtons({ def, row, onDone }: { def: ResourceDef; row: Row; onDone: () => void }) {
  const auth = useAuth();
  const [busy, setBusy] = useState<string | null>(null);
  const go = (a: Action) => {
    const exec = async () => {
      setBusy(a.label);
      try {
        const res = await a.run(row);
        toastOk(`${a.label}: ${def.nameOf?.(row) ?? row.name ?? idOf(def, row)}`);
        watchOperation(res, onDone);
        onDone();
      } catch (e) {
        toastError(e);
      } finally {
        setBusy(null);
      }
    };
    if (a.confirm) confirmThen(a.confirm(row), a.label, () => void exec());
    else void exec();
  };
  return (
    <Group gap={6} wrap="nowrap">
      {allActions(def)
        .filter((a) => !a.when || a.when(row))
        .map((a) => (
          <GuardedButton
            key={a.label}
            size="compact-xs"
            variant="light"
            color={a.color}
            loading={busy === a.label}
            verdict={auth.can(a.need, ownerOf(def, row))}
            onClick={() => go(a)}
          >
            {a.label}
          </GuardedButton>
        ))}
    </Group>
  );
}

export function CreateButton({ def, onCreated }: { def: ResourceDef; onCreated?: (row: Row) => void }) {
  const auth = useAuth();
  const [open, setOpen] = useState(false);
  const [secret, setSecret] = useState<string | null>(null);
  if (!def.create) return null;
  const c = def.create;
  return (
    <>
      <GuardedButton verdict={auth.can(c.need)} onClick={() => setOpen(true)}>
        {c.label ?? `Create ${def.singular}`}
      </GuardedButton>
      <Modal opened={open} onClose={() => setOpen(false)} title={c.label ?? `Create ${def.singular}`} size="lg">
        <SchemaForm
          schema={c.schema}
          primary={c.primary}
          submitLabel="Create"
          onSubmit={async (body) => {
            try {
              const row = await api<Row>(c.path ?? def.listPath, { method: "POST", body, query: c.query });
              toastOk(`${def.singular} created`);
              watchOperation(row, () => onCreated?.(row));
              setOpen(false);
              const secret = row?.secret ?? row?.token;
              if (typeof secret === "string") setSecret(secret);
              onCreated?.(row);
            } catch (e) {
              toastError(e);
            }
          }}
        />
      </Modal>
      <SecretOnce secret={secret} onClose={() => setSecret(null)} />
    </>
  );
}

/** A secret the API shows once (token, signing secret), with a copy button. */
export function SecretOnce({ secret, onClose }: { secret: string | null; onClose: () => void }) {
  return (
    <Modal opened={secret !== null} onClose={onClose} title="Copy it now" size="lg">
      <Stack>
        <Alert color="yellow">This secret is shown once and never again.</Alert>
        <Group wrap="nowrap">
          <Code data-testid="secret-once" style={{ wordBreak: "break-all" }}>
            {secret}
          </Code>
          <CopyButton value={secret ?? ""}>
            {({ copied, copy }) => (
              <Button size="xs" onClick={copy} color={copied ? "teal" : "blue"}>
                {copied ? "Copied" : "Copy"}
              </Button>
            )}
          </CopyButton>
        </Group>
        <Button onClick={onClose}>Done</Button>
      </Stack>
    </Modal>
  );
}

/** A button opening a form for any request schema; `submit` sends it. */
export function FormButton({
  label,
  schema,
  verdict,
  submit,
  initial,
  omit,
  size = "xs",
}: {
  label: string;
  schema: keyof Schemas;
  verdict: { ok: boolean; reason: string };
  submit: (body: Record<string, unknown>) => Promise<unknown>;
  initial?: Record<string, unknown>;
  omit?: string[];
  size?: string;
}) {
  const [open, setOpen] = useState(false);
  return (
    <>
      <GuardedButton size={size} variant="light" verdict={verdict} onClick={() => setOpen(true)}>
        {label}
      </GuardedButton>
      <Modal opened={open} onClose={() => setOpen(false)} title={label} size="lg">
        <SchemaForm
          schema={schema}
          submitLabel={label}
          initial={initial}
          omit={omit}
          onSubmit={async (body) => {
            try {
              await submit(body);
              toastOk(label);
              setOpen(false);
            } catch (e) {
              toastError(e);
            }
          }}
        />
      </Modal>
    </>
  );
}

export function usePaged<T = Row>(path: string, query: Record<string, string | undefined> = {}, enabled = true) {
  return useInfiniteQuery({
    queryKey: [path, query],
    enabled,
    initialPageParam: null as string | null,
    queryFn: ({ pageParam }) => api<Page<T>>(path, { query: { ...query, limit: 50, cursor: pageParam } }),
    getNextPageParam: (last) => last.next_cursor ?? null,
  });
}

export function ErrorAlert({ error }: { error: unknown }) {
  const { title, message } = describeError(error);
  return (
    <Alert color="red" title={title}>
      {message}
    </Alert>
  );
}

export function ResourceList({ def, extraTop }: { def: ResourceDef; extraTop?: ReactNode }) {
  const auth = useAuth();
  const nav = useNavigate();
  const qc = useQueryClient();
  const [search, setSearch] = useState("");
  const [filters, setFilters] = useState<Record<string, string | undefined>>({});
  const [mine, setMine] = useState(false);
  const [selected, setSelected] = useState<Set<string>>(new Set());
  const allowed = def.listNeed ? auth.can(def.listNeed) : { ok: true, reason: "" };
  const [typed] = useDebouncedValue(search.trim(), 300);
  const server = def.server ?? {};
  const me = auth.me?.user.id;
  const query: Record<string, string | undefined> = {
    ...filters,
    ...(server.search && typed ? { [server.search]: typed } : {}),
    ...(server.mine && mine && me ? { [server.mine]: me } : {}),
  };
  const q = usePaged(def.listPath, query, allowed.ok);
  const rows = (q.data?.pages.flatMap((p) => p.items) ?? []).filter((r) => {
    if (mine && !server.mine && ownerOf(def, r) !== me) return false;
    if (!search || server.search) return true;
    const s = search.toLowerCase();
    return [r.name, r.id, r.username, r.title, r.action, r.type].some((v) => typeof v === "string" && v.toLowerCase().includes(s));
  });
  const refresh = () => void qc.invalidateQueries({ queryKey: [def.listPath] });
  const bulk = allActions(def).filter((a) => a.bulk);
  const chosen = rows.filter((r) => selected.has(idOf(def, r)));

  const runBulk = (a: Action) =>
    confirmThen(`${a.label} ${chosen.length} ${def.title.toLowerCase()}?`, a.label, () => {
      void (async () => {
        for (const r of chosen) {
          try {
            watchOperation(await a.run(r), refresh);
          } catch (e) {
            toastError(e);
          }
        }
        setSelected(new Set());
        toastOk(`${a.label}: ${chosen.length} done`);
        refresh();
      })();
    });

  if (!allowed.ok) {
    return (
      <Stack>
        <Title order={2}>{def.title}</Title>
        <Alert color="gray">{allowed.reason}.</Alert>
      </Stack>
    );
  }
  return (
    <Stack>
      <Group justify="space-between">
        <Title order={2}>{def.title}</Title>
        <Group>
          {extraTop}
          <CreateButton def={def} onCreated={refresh} />
        </Group>
      </Group>
      <Group>
        <TextInput
          aria-label={`Search ${def.title.toLowerCase()}`}
          placeholder={server.search ? "Search by name" : "Search by name or id"}
          maxLength={100}
          value={search}
          onChange={(e) => setSearch(e.currentTarget.value)}
          w={260}
        />
        {def.filters?.map((f) => (
          <Select
            key={f.param}
            aria-label={f.label}
            placeholder={f.label}
            data={f.options}
            clearable
            value={filters[f.param] ?? null}
            onChange={(v) => setFilters((old) => ({ ...old, [f.param]: v ?? undefined }))}
            w={180}
          />
        ))}
        {def.mine !== false && (
          <Switch label="My resources" checked={mine} onChange={(e) => setMine(e.currentTarget.checked)} />
        )}
        {bulk.length > 0 &&
          bulk.map((a) => (
            <GuardedButton
              key={a.label}
              variant="outline"
              color={a.color}
              disabled={chosen.length === 0}
              verdict={auth.can(a.need)}
              onClick={() => runBulk(a)}
            >
              {a.label} selected ({chosen.length})
            </GuardedButton>
          ))}
      </Group>
      {q.error ? <ErrorAlert error={q.error} /> : null}
      {q.isLoading ? (
        <Loader />
      ) : rows.length === 0 ? (
        <Paper withBorder p="xl">
          <Text c="dimmed" data-testid="empty">
            {search.trim()
              ? `No ${def.title} match “${search.trim()}”${mine || Object.values(filters).some(Boolean) ? " with these filters" : ""}: try another search.`
              : mine || Object.values(filters).some(Boolean)
                ? "Nothing matches these filters."
                : def.empty}
          </Text>
        </Paper>
      ) : (
        <Table.ScrollContainer minWidth={900} scrollAreaProps={{ viewportProps: { tabIndex: 0 } }}>
          <Table striped highlightOnHover>
            <Table.Thead>
              <Table.Tr>
                {bulk.length > 0 && (
                  <Table.Th w={32}>
                    <Checkbox
                      aria-label="Select all"
                      checked={chosen.length > 0 && chosen.length === rows.length}
                      onChange={(e) =>
                        setSelected(e.currentTarget.checked ? new Set(rows.map((r) => idOf(def, r))) : new Set())
                      }
                    />
                  </Table.Th>
                )}
                {def.columns.map((c) => (
                  <Table.Th key={c.key}>{c.label}</Table.Th>
                ))}
                <Table.Th>Owner</Table.Th>
                <Table.Th>Actions</Table.Th>
              </Table.Tr>
            </Table.Thead>
            <Table.Tbody>
              {rows.map((r) => {
                const id = idOf(def, r);
                return (
                  <Table.Tr key={id}>
                    {bulk.length > 0 && (
                      <Table.Td>
                        <Checkbox
                          aria-label={`Select ${id}`}
                          checked={selected.has(id)}
                          onChange={(e) => {
                            const next = new Set(selected);
                            if (e.currentTarget.checked) next.add(id);
                            else next.delete(id);
                            setSelected(next);
                          }}
                        />
                      </Table.Td>
                    )}
                    {def.columns.map((c, i) => (
                      <Table.Td key={c.key}>
                        {i === 0 && def.detail !== false ? (
                          <Anchor component={Link} to={`/${def.key}/${encodeURIComponent(id)}`}>
                            {c.render ? c.render(r) : cell(c.key, r[c.key])}
                          </Anchor>
                        ) : c.render ? (
                          c.render(r)
                        ) : (
                          cell(c.key, r[c.key])
                        )}
                      </Table.Td>
                    ))}
                    <Table.Td>
                      <OwnerBadge ownerId={ownerOf(def, r)} userId={auth.me?.user.id} />
                    </Table.Td>
                    <Table.Td>
                      <ActionButtons def={def} row={r} onDone={refresh} />
                    </Table.Td>
                  </Table.Tr>
                );
              })}
            </Table.Tbody>
          </Table>
        </Table.ScrollContainer>
      )}
      {q.hasNextPage && (
        <Button variant="subtle" onClick={() => void q.fetchNextPage()} loading={q.isFetchingNextPage}>
          Load more
        </Button>
      )}
      {def.detail === false ? null : <Text size="xs" c="dimmed">Select a {def.singular}'s name for its details.</Text>}
      <span hidden>{nav.length}</span>
    </Stack>
  );
}

export function Fields({ row }: { row: Row }) {
  return (
    <Table withTableBorder withColumnBorders>
      <Table.Tbody>
        {Object.entries(row).map(([k, v]) => (
          <Table.Tr key={k}>
            <Table.Th w={220}>{k}</Table.Th>
            <Table.Td>
              {v !== null && typeof v === "object" ? (
                <Text component="pre" size="xs" m={0} style={{ whiteSpace: "pre-wrap" }}>
                  {JSON.stringify(v, null, 2)}
                </Text>
              ) : (
                cell(k, v)
              )}
            </Table.Td>
          </Table.Tr>
        ))}
      </Table.Tbody>
    </Table>
  );
}

/** A plain sub-list (deliveries, runs, versions...) with columns. */
export function SubList({
  path,
  columns,
  empty,
  actions,
}: {
  path: string;
  columns: Column[];
  empty: string;
  actions?: (row: Row, refresh: () => void) => ReactNode;
}) {
  const qc = useQueryClient();
  const q = usePaged(path);
  const rows = q.data?.pages.flatMap((p) => p.items) ?? [];
  if (q.error) return <ErrorAlert error={q.error} />;
  if (q.isLoading) return <Loader />;
  if (!rows.length) return <Text c="dimmed">{empty}</Text>;
  return (
    <Stack>
      <Table striped>
        <Table.Thead>
          <Table.Tr>
            {columns.map((c) => (
              <Table.Th key={c.key}>{c.label}</Table.Th>
            ))}
            {actions && <Table.Th>Actions</Table.Th>}
          </Table.Tr>
        </Table.Thead>
        <Table.Tbody>
          {rows.map((r, i) => (
            <Table.Tr key={String(r.id ?? i)}>
              {columns.map((c) => (
                <Table.Td key={c.key}>{c.render ? c.render(r) : cell(c.key, r[c.key])}</Table.Td>
              ))}
              {actions && <Table.Td>{actions(r, () => void qc.invalidateQueries({ queryKey: [path] }))}</Table.Td>}
            </Table.Tr>
          ))}
        </Table.Tbody>
      </Table>
      {q.hasNextPage && (
        <Button variant="subtle" onClick={() => void q.fetchNextPage()}>
          Load more
        </Button>
      )}
    </Stack>
  );
}

export function ResourceDetail({ def }: { def: ResourceDef }) {
  const auth = useAuth();
  const { id = "" } = useParams();
  const nav = useNavigate();
  const qc = useQueryClient();
  const q = useQuery({ queryKey: [itemPath(def, id)], queryFn: () => api<Row>(itemPath(def, id)) });
  const row = q.data;
  return (
    <Stack>
      <Group justify="space-between">
        <div>
          <Anchor component={Link} to={`/${def.key}`} size="sm">
            ← {def.title}
          </Anchor>
          <Title order={2}>
            {def.singular} {row ? String(def.nameOf?.(row) ?? row.name ?? id) : id}
          </Title>
        </div>
        {row && (
          <Group>
            <ActionButtons
              def={def}
              row={row}
              onDone={() => {
                void qc.invalidateQueries({ queryKey: [def.listPath] });
                void q.refetch().then((r) => r.error && nav(`/${def.key}`));
              }}
            />
            {def.update && (
              <FormButton
                label="Edit"
                schema={def.update.schema}
                verdict={auth.can(def.update.need, ownerOf(def, row))}
                initial={Object.fromEntries(
                  Object.entries(row).filter(([k]) => schemaFields(def.update!.schema).some((f) => f.name === k)),
                )}
                submit={async (body) => {
                  await api(itemPath(def, id), { method: def.update?.method ?? "PATCH", body });
                  void qc.invalidateQueries({ queryKey: [def.listPath] });
                  await q.refetch();
                }}
              />
            )}
          </Group>
        )}
      </Group>
      {q.error ? <ErrorAlert error={q.error} /> : null}
      {q.isLoading && <Loader />}
      {row && (
        <Tabs defaultValue="details" keepMounted={false}>
          <Tabs.List>
            <Tabs.Tab value="details">Details</Tabs.Tab>
            {def.tabs?.map((t) => (
              <Tabs.Tab key={t.label} value={t.label}>
                {t.label}
              </Tabs.Tab>
            ))}
          </Tabs.List>
          <Tabs.Panel value="details" pt="md">
            <Fields row={row} />
          </Tabs.Panel>
          {def.tabs?.map((t) => (
            <Tabs.Panel key={t.label} value={t.label} pt="md">
              {t.render(row)}
            </Tabs.Panel>
          ))}
        </Tabs>
      )}
    </Stack>
  );
}
