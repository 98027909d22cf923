// The terminal (xterm.js) in its own chunk: loaded when a terminal tab is opened.
import { Loader } from "@mantine/core";
import { lazy, Suspense, type ComponentProps } from "react";
import type { VmTerminal as Eager } from "./Terminal";

const Lazy = lazy(() => import("./Terminal").then((m) => ({ default: m.VmTerminal })));

export function VmTerminal(props: ComponentProps<typeof Eager>) {
  return (
    <Suspense fallback={<Loader aria-label="Loading the terminal" />}>
      <Lazy {...props} />
    </Suspense>
  );
}
