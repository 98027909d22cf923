// An interactive shell: a single-use ticket (POST /v1/vms/{id}/shell/ticket for a VM's guest,
// POST /v1/containers/{id}/shell/ticket inside a container), then the WebSocket it names
// (binary frames = terminal bytes; text frames = resize/exit JSON).
import { Alert, Button, Group, Paper, Text } from "@mantine/core";
import { FitAddon } from "@xterm/addon-fit";
import { Terminal } from "@xterm/xterm";
import { useEffect, useRef, useState } from "react";
import { api } from "../api/session";
import { toastError } from "../notify";

const VM_SHELL = { purpose: "shell" };

/** A shell in a VM's guest. */
export function VmTerminal({ vmId, disabledReason }: { vmId: string; disabledReason?: string }) {
  return (
    <ShellTerminal
      ticketPath={`/v1/vms/${encodeURIComponent(vmId)}/shell/ticket`}
      ticketBody={VM_SHELL}
      label="VM terminal"
      disabledReason={disabledReason}
    />
  );
}

/** A terminal on the WebSocket that a ticket from `ticketPath` opens (`ticketBody`: keep it a
 * stable object, a new one reopens the session). */
export function ShellTerminal({
  ticketPath,
  ticketBody,
  label,
  disabledReason,
}: {
  ticketPath: string;
  ticketBody?: unknown;
  label: string;
  disabledReason?: string;
}) {
  const box = useRef<HTMLDivElement>(null);
  const [status, setStatus] = useState<"idle" | "connecting" | "open" | "closed">("idle");
  const [session, setSession] = useState(0);
  const cleanup = useRef<() => void>(() => undefined);

  useEffect(() => () => cleanup.current(), []);

  useEffect(() => {
    if (session === 0 || !box.current) return;
    const term = new Terminal({ cursorBlink: true, fontSize: 14, convertEol: false });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(box.current);
    fit.fit();
    let ws: WebSocket | null = null;
    let disposed = false;
    setStatus("connecting");
    void (async () => {
      try {
        const t = await api<{ ticket: string; ws_path: string }>(ticketPath, { method: "POST", body: ticketBody });
        if (disposed) return;
        const proto = location.protocol === "https:" ? "wss" : "ws";
        const q = new URLSearchParams({ ticket: t.ticket, cols: String(term.cols), rows: String(term.rows) });
        ws = new WebSocket(`${proto}://${location.host}${t.ws_path}?${q}`);
        ws.binaryType = "arraybuffer";
        ws.onopen = () => {
          setStatus("open");
          term.focus();
        };
        ws.onmessage = (m) => {
          if (typeof m.data === "string") {
            try {
              const msg = JSON.parse(m.data) as { type?: string; exit_code?: number };
              if (msg.type === "exit") term.write(`\r\n[exited with ${msg.exit_code}]\r\n`);
            } catch {
              term.write(m.data);
            }
          } else term.write(new Uint8Array(m.data as ArrayBuffer));
        };
        ws.onclose = () => setStatus("closed");
        const enc = new TextEncoder();
        term.onData((d) => ws?.readyState === WebSocket.OPEN && ws.send(enc.encode(d)));
        term.onResize(({ cols, rows }) => ws?.readyState === WebSocket.OPEN && ws.send(JSON.stringify({ type: "resize", cols, rows })));
      } catch (e) {
        setStatus("closed");
        toastError(e);
      }
    })();
    const onWin = () => fit.fit();
    window.addEventListener("resize", onWin);
    cleanup.current = () => {
      disposed = true;
      window.removeEventListener("resize", onWin);
      ws?.close();
      term.dispose();
    };
    return cleanup.current;
  }, [session, ticketPath, ticketBody]);

  if (disabledReason) return <Alert color="gray">{disabledReason}</Alert>;
  return (
    <div>
      <Group mb="xs">
        <Button onClick={() => setSession((s) => s + 1)} disabled={status === "connecting" || status === "open"}>
          {session === 0 ? "Open shell" : "Reconnect"}
        </Button>
        <Text size="sm" c="dimmed" data-testid="terminal-status">
          {status}
        </Text>
      </Group>
      <Paper withBorder p={4} bg="black">
        <div ref={box} data-testid="terminal" style={{ height: 360 }} aria-label={label} />
      </Paper>
    </div>
  );
}
