// The terminal (xterm.js) in its own chunk: loaded when a terminal tab is opened.
import { Loader } from "@mantine/core";
import { lazy, Suspense, type ComponentProps } from "react";
import type { ShellTerminal as EagerShell, VmTerminal as EagerVm } from "./Terminal";

const LazyVm = lazy(() => import("./Terminal").then((m) => ({ default: m.VmTerminal })));
const LazyShell = lazy(() => import("./Terminal").then((m) => ({ default: m.ShellTerminal })));
const loading = <Loader aria-label="Loading the terminal" />;

export function VmTerminal(props: ComponentProps<typeof EagerVm>) {
  return (
    <Suspense fallback={loading}>
      <LazyVm {...props} />
    </Suspense>
  );
}

export function ShellTerminal(props: ComponentProps<typeof EagerShell>) {
  return (
    <Suspense fallback={loading}>
      <LazyShell {...props} />
    </Suspense>
  );
}
