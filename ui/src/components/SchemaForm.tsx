// A form for any request body of the API, built from its schema in the OpenAPI document the
// manager serves (bundled at build time): no request shape is written by hand in the UI.
import {
  Accordion,
  Button,
  Checkbox,
  Fieldset,
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
import { useState, type FormEvent, type JSX } from "react";
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

export type FieldKind = "text" | "number" | "bool" | "enum" | "multi" | "tags" | "object" | "json";

type Field = { name: string; schema: JsonSchema; required: boolean };

/** The fields of an object schema, with what is required. */
function fieldsOf(s: JsonSchema): Field[] {
  const req = new Set(s.required ?? []);
  return Object.entries(s.properties ?? {}).map(([n, sch]) => ({ name: n, schema: sch, required: req.has(n) }));
}

/** Long text typed by hand (code, scripts): a multi-line, monospace box. */
const MULTILINE = new Set(["source", "user_data", "script"]);

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
  // an object of plain fields (e.g. a function's code: source or zip) gets a field each
  const sub = fieldsOf(r);
  if (sub.length && sub.every((f) => ["text", "number", "bool", "enum"].includes(fieldKind(f.schema)))) return "object";
  return "json";
}

export function schemaFields(name: keyof Schemas): Field[] {
  return fieldsOf(resolve(schemas[name as string]));
}

/** An object field's value as sent: its filled sub-fields, or undefined when none is. */
export function objectValue(v: unknown): Record<string, unknown> | undefined {
  if (!v || typeof v !== "object") return undefined;
  const kept = Object.entries(v as Record<string, unknown>).filter(([, x]) => x !== undefined && x !== "");
  return kept.length ? Object.fromEntries(kept) : undefined;
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
      if (fieldKind(f.schema) === "object") {
        const o = objectValue(v);
        if (o !== undefined) body[f.name] = o;
      } else if (fieldKind(f.schema) === "json" && typeof v === "string") {
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

  const render = (f: Field) => field(f, values[f.name], (x) => set(f.name, x));

  const field = (f: Field, v: unknown, put: (x: unknown) => void, parent = ""): JSX.Element => {
    const r = resolve(f.schema);
    const common = {
      key: parent + f.name,
      label: label(f.name),
      description: r.description ?? f.schema.description,
      required: f.required,
    };
    const set = (_k: string, x: unknown) => put(x);
    switch (fieldKind(f.schema)) {
      case "object": {
        const obj = (v && typeof v === "object" ? v : {}) as Record<string, unknown>;
        return (
          <Fieldset key={common.key} legend={`${common.label}${f.required ? " *" : ""}`}>
            {common.description && (
              <Text size="xs" c="dimmed" mb="xs">
                {common.description}
              </Text>
            )}
            <Stack gap="sm">
              {fieldsOf(r).map((sf) => field(sf, obj[sf.name], (x) => put({ ...obj, [sf.name]: x }), `${common.key}.`))}
            </Stack>
          </Fieldset>
        );
      }
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
        if (MULTILINE.has(f.name))
          return (
            <Textarea
              {...common}
              autosize
              minRows={4}
              maxRows={20}
              styles={{ input: { fontFamily: "monospace" } }}
              value={(v as string) ?? ""}
              onChange={(e) => set(f.name, e.currentTarget.value)}
            />
          );
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
            key={common.key}
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
