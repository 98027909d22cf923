// A form for any request body of the API, built from its schema in the OpenAPI document the
// manager serves (bundled at build time): no request shape is written by hand in the UI.
import {
  Accordion,
  Button,
  Checkbox,
  Group,
  MultiSelect,
  NumberInput,
  Select,
  Stack,
  TagsInput,
  Text,
  Textarea,
  TextInput,
} from "@mantine/core";
import { useState, type FormEvent } from "react";
// (only the schemas: the bundle leaves out the paths)
import { components } from "../../openapi.json";
import type { Schemas } from "../api/types";

type JsonSchema = {
  $ref?: string;
  type?: string;
  enum?: unknown[];
  anyOf?: JsonSchema[];
  oneOf?: JsonSchema[];
  allOf?: JsonSchema[];
  items?: JsonSchema;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  description?: string;
  title?: string;
  default?: unknown;
  const?: unknown;
  minimum?: number;
  maximum?: number;
  format?: string;
  writeOnly?: boolean;
};

const schemas = (components as unknown as { schemas: Record<string, JsonSchema> }).schemas;

export function resolve(s: JsonSchema | undefined): JsonSchema {
  if (!s) return {};
  if (s.$ref) return resolve(schemas[s.$ref.split("/").pop() ?? ""]);
  const alts = s.anyOf ?? s.oneOf;
  if (alts) {
    const nonNull = alts.filter((a) => a.type !== "null");
    if (nonNull.length === 1) return { ...resolve(nonNull[0]), description: s.description ?? nonNull[0].description, default: s.default };
  }
  if (s.allOf && s.allOf.length === 1) return { ...resolve(s.allOf[0]), description: s.description, default: s.default };
  return s;
}

export type FieldKind = "text" | "number" | "bool" | "enum" | "multi" | "tags" | "json";

export function fieldKind(s: JsonSchema): FieldKind {
  const r = resolve(s);
  if (r.enum) return "enum";
  if (r.type === "string") return "text";
  if (r.type === "integer" || r.type === "number") return "number";
  if (r.type === "boolean") return "bool";
  if (r.type === "array") {
    const it = resolve(r.items);
    if (it.enum) return "multi";
    if (it.type === "string") return "tags";
  }
  return "json";
}

export function schemaFields(name: keyof Schemas): { name: string; schema: JsonSchema; required: boolean }[] {
  const s = resolve(schemas[name as string]);
  const req = new Set(s.required ?? []);
  return Object.entries(s.properties ?? {}).map(([n, sch]) => ({ name: n, schema: sch, required: req.has(n) }));
}

const WORDS: Record<string, string> = { cidr: "CIDR", url: "URL", mib: "MiB", ttl: "TTL", id: "ID", ip: "IP", ssh: "SSH", vcpus: "vCPUs", s: "(s)" };

export function label(name: string): string {
  const words = name.split("_").map((w) => WORDS[w] ?? w);
  const text = words.join(" ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

interface Props {
  schema: keyof Schemas;
  initial?: Record<string, unknown>;
  submitLabel: string;
  onSubmit: (body: Record<string, unknown>) => Promise<unknown>;
  /** fields shown up front even when optional */
  primary?: string[];
  /** fields left out (set by the page itself) */
  omit?: string[];
}

export function SchemaForm({ schema, initial, submitLabel, onSubmit, primary = [], omit = [] }: Props) {
  const fields = schemaFields(schema).filter((f) => !omit.includes(f.name));
  const [values, setValues] = useState<Record<string, unknown>>(initial ?? {});
  const [busy, setBusy] = useState(false);
  const [jsonError, setJsonError] = useState<string | null>(null);
  const set = (k: string, v: unknown) => setValues((old) => ({ ...old, [k]: v }));

  async function submit(e: FormEvent) {
    e.preventDefault();
    const body: Record<string, unknown> = {};
    for (const f of fields) {
      const v = values[f.name];
      if (v === undefined || v === "" || (Array.isArray(v) && v.length === 0 && !f.required && !initial)) continue;
      // an edit sends only what changed
      if (initial && JSON.stringify(v) === JSON.stringify(initial[f.name])) continue;
      if (fieldKind(f.schema) === "json" && typeof v === "string") {
        try {
          body[f.name] = JSON.parse(v);
        } catch {
          setJsonError(`${label(f.name)}: not valid JSON`);
          return;
        }
      } else body[f.name] = v;
    }
    setJsonError(null);
    setBusy(true);
    try {
      await onSubmit(body);
    } finally {
      setBusy(false);
    }
  }

  const render = (f: { name: string; schema: JsonSchema; required: boolean }) => {
    const r = resolve(f.schema);
    const common = {
      key: f.name,
      label: label(f.name),
      description: r.description ?? f.schema.description,
      required: f.required,
    };
    const v = values[f.name];
    switch (fieldKind(f.schema)) {
      case "enum":
        return (
          <Select
            {...common}
            data={(r.enum ?? []).map(String)}
            value={(v as string) ?? null}
            placeholder={r.default !== undefined && r.default !== null ? String(r.default) : undefined}
            clearable={!f.required}
            onChange={(x) => set(f.name, x ?? undefined)}
          />
        );
      case "text":
        return (
          <TextInput
            {...common}
            type={/password|secret/.test(f.name) ? "password" : "text"}
            value={(v as string) ?? ""}
            placeholder={typeof r.default === "string" ? r.default : undefined}
            onChange={(e) => set(f.name, e.currentTarget.value)}
          />
        );
      case "number":
        return (
          <NumberInput
            {...common}
            value={(v as number) ?? ""}
            min={r.minimum}
            max={r.maximum}
            placeholder={typeof r.default === "number" ? String(r.default) : undefined}
            onChange={(x) => set(f.name, x === "" ? undefined : Number(x))}
          />
        );
      case "bool":
        return (
          <Checkbox
            key={f.name}
            label={label(f.name)}
            description={common.description}
            checked={(v as boolean | undefined) ?? (r.default === true)}
            onChange={(e) => set(f.name, e.currentTarget.checked)}
          />
        );
      case "multi":
        return (
          <MultiSelect
            {...common}
            data={(resolve(r.items).enum ?? []).map(String)}
            value={(v as string[] | undefined) ?? (Array.isArray(r.default) ? r.default.map(String) : [])}
            onChange={(x) => set(f.name, x)}
          />
        );
      case "tags":
        return (
          <TagsInput
            {...common}
            value={(v as string[]) ?? []}
            onChange={(x) => set(f.name, x)}
            placeholder="type, then Enter"
          />
        );
      default:
        return (
          <Textarea
            {...common}
            autosize
            minRows={2}
            styles={{ input: { fontFamily: "monospace" } }}
            value={typeof v === "string" ? v : v === undefined ? "" : JSON.stringify(v, null, 1)}
            placeholder={r.default !== undefined ? JSON.stringify(r.default) : "JSON"}
            onChange={(e) => set(f.name, e.currentTarget.value)}
          />
        );
    }
  };

  // an edit shows every field; a create puts the optional ones under "More options"
  const up = (f: { name: string; required: boolean }) => initial !== undefined || f.required || primary.includes(f.name);
  const main = fields.filter(up);
  const more = fields.filter((f) => !up(f));
  return (
    <form onSubmit={submit}>
      <Stack gap="sm">
        {main.map(render)}
        {more.length > 0 && (
          <Accordion variant="contained">
            <Accordion.Item value="more">
              <Accordion.Control>More options ({more.length})</Accordion.Control>
              <Accordion.Panel>
                <Stack gap="sm">{more.map(render)}</Stack>
              </Accordion.Panel>
            </Accordion.Item>
          </Accordion>
        )}
        {jsonError && (
          <Text c="red" size="sm">
            {jsonError}
          </Text>
        )}
        <Group justify="flex-end">
          <Button type="submit" loading={busy}>
            {submitLabel}
          </Button>
        </Group>
      </Stack>
    </form>
  );
}
