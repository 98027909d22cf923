import "@mantine/core/styles.css";
import "@mantine/charts/styles.css";
import "@mantine/notifications/styles.css";
import "@xterm/xterm/css/xterm.css";
import "./app.css";
import { createTheme, DEFAULT_THEME, MantineProvider, Modal, type CSSVariablesResolver } from "@mantine/core";
import { Notifications } from "@mantine/notifications";
import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { BrowserRouter } from "react-router-dom";
import { ApiError } from "./api/errors";
import { App } from "./App";
import { lightColorVariables } from "./contrast";

const theme = createTheme({
  primaryColor: "blue",
  defaultRadius: "sm",
  // every dialog's close button has a name for screen readers
  components: { Modal: Modal.extend({ defaultProps: { closeButtonProps: { "aria-label": "Close dialog" } } }) },
});
// WCAG AA contrast in both schemes (ui/src/contrast.ts; the browser tests run axe-core)
const light = lightColorVariables(DEFAULT_THEME.colors);
const filled = Object.fromEntries(Object.entries(light).filter(([k]) => /-filled(-hover)?$/.test(k)));
const cssVariablesResolver: CSSVariablesResolver = () => ({
  variables: {},
  light: {
    ...light,
    "--mantine-color-anchor": light["--mantine-color-blue-text"],
    "--mantine-color-dimmed": "var(--mantine-color-gray-7)",
  },
  dark: { ...filled, "--mantine-color-dimmed": "var(--mantine-color-dark-1)" },
});
const queryClient = new QueryClient({
  defaultOptions: {
    queries: {
      staleTime: 5_000,
      retry: (n, err) => !(err instanceof ApiError && err.status >= 400 && err.status < 500) && n < 2,
      refetchOnWindowFocus: false,
    },
  },
});

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <MantineProvider theme={theme} defaultColorScheme="light" cssVariablesResolver={cssVariablesResolver}>
      <Notifications position="top-right" />
      <QueryClientProvider client={queryClient}>
        <BrowserRouter>
          <App />
        </BrowserRouter>
      </QueryClientProvider>
    </MantineProvider>
  </StrictMode>,
);
